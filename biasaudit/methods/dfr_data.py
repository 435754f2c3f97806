"""What DFR fits on (biasaudit.methods.dfr; methods.md section 8): the inputs of a model's final nn.Linear over
held-out batches, and, without a val split, a seeded part of train to hold out."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from biasaudit._core.annotations import shown
from biasaudit._core.arguments import at_least, check_argument, checked, checked_keywords
from biasaudit.errors import ArgumentTypeError, InputError


@checked_keywords("classifier_inputs")  # the types below, by check_argument (the classifier's sentence is its own)
def classifier_inputs(
    model: nn.Module, classifier: nn.Linear, batches: Iterable[Any], *, forward: Callable[[nn.Module, Any], Any] | None = None
) -> torch.Tensor:
    """The inputs of `classifier` (an nn.Linear inside `model`) over `batches`, float32 [N, D] on the CPU.

    The model runs in eval mode under no_grad; each module's own train/eval flag is restored afterwards. Each batch
    is run as `forward(model, batch)` when given (e.g. `lambda m, b: m(b["image"].cuda(), b["text"].cuda())` for a
    loader that also yields labels), else a tuple or list as `model(*batch)`, a dict as `model(**batch)` and anything
    else as `model(batch)`. `classifier` must run exactly once per batch."""
    where = "classifier_inputs"
    check_argument(model, nn.Module, parameter="model", where=where)
    # Worded by hand, not by check_argument: "classifier must be an nn.Linear" and "classifier is not a submodule of
    # model" are the phrases tests/test_method_dfr.py looks for.
    if not isinstance(classifier, nn.Linear):
        raise ArgumentTypeError(
            f"The 'classifier' parameter of {where} is {shown(classifier)}, but the classifier must be an "
            "nn.Linear: the model's own final linear layer (e.g. model.classifier)."
        )
    if not any(module is classifier for module in model.modules()):
        raise InputError(
            f"The 'classifier' parameter of {where} is {shown(classifier)}, but this classifier is not a submodule "
            "of model; expected the model's own final nn.Linear (e.g. model.classifier)."
        )
    check_argument(batches, Iterable[Any], parameter="batches", where=where)
    check_argument(forward, Callable[[nn.Module, Any], Any] | None, parameter="forward", where=where)
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().float().cpu())

    modes = [(module, module.training) for module in model.modules()]
    handle = classifier.register_forward_pre_hook(keep)
    chunks: list[torch.Tensor] = []
    try:
        model.eval()
        with torch.no_grad():
            for index, batch in enumerate(batches):
                captured.clear()
                _run(model, batch, forward)
                if len(captured) != 1:
                    raise InputError(
                        f"The {'forward' if forward is not None else 'model'!r} parameter of {where} ran so "
                        f"that the classifier ran {len(captured)} times on batch {index}; expected exactly one run "
                        "of 'classifier' per forward of 'model'."
                    )
                if captured[0].ndim != 2 or captured[0].shape[1] != classifier.in_features:
                    raise InputError(
                        f"The 'classifier' parameter of {where} got an input of shape {tuple(captured[0].shape)} "
                        f"on batch {index}; expected [batch, {classifier.in_features}], its in_features."
                    )
                chunks.append(captured[0])
    finally:
        handle.remove()
        for module, training in modes:
            module.training = training
    if not chunks:
        raise InputError(
            f"The 'batches' parameter of {where} is {shown(batches)}, whose batches yielded no batch; expected "
            "the held-out inputs (e.g. a DataLoader over val)."
        )
    return torch.cat(chunks)


@checked(
    "holdout_indices",
    num_samples=at_least(1),
    seed=at_least(0),
    fraction=lambda value: None if 0 < value < 1 else "a number strictly between 0 and 1",
)
def holdout_indices(num_samples: int, *, fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded `fraction` of `num_samples` (at least one): DFR's data when there is no val split.
    Say so with `DFR.fit(..., split=f"{fraction:.0%} of train (seed {seed})")`."""
    size = max(1, round(num_samples * float(fraction)))
    return np.sort(np.random.default_rng(seed).choice(num_samples, size=size, replace=False))


def _run(model: nn.Module, batch: Any, forward: Callable[[nn.Module, Any], Any] | None) -> None:
    if forward is not None:
        forward(model, batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    elif isinstance(batch, dict):
        model(**batch)
    else:
        model(batch)
