"""Train/eval modes of a model's modules for a block of work that must not train (an extra pass over data)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluation_modes(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode for the block (no dropout drawn, no BatchNorm statistic moved); each module's own flag
    restored afterwards, not one flag for the whole model, which would undo the eval mode of frozen parts."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.train(training)
