"""What biasaudit's loop (loop.py) asks of a method's driver, the class the registry names (methods.py): the protocol,
and the loop's reading of its optional hooks.

Two optional extensions serve methods that are more than a per-step gradient (methods.md section 8):
- Sample indices. A method with `sample_index = True` (JTT) gets every training batch with one more column,
  SAMPLE_INDEX: each sample's global index in the training split (its position in the adapter's order, counted
  before held-out rows are removed), a long tensor that shuffles with the rows (epoch_batches.py). Other methods get
  the batches exactly as before. A method strips the column (`without_index`) before adapter.prepare.
- Epoch end. A method with `epoch_end(model, view, *, epoch, epochs, device)` is called after each epoch's steps
  and before the epoch's training state is saved, so whatever it changes (D&R's re-initialised branches, JTT's
  restart) is in that state and a resumed run continues after it. `view` is the TrainingView (train without the
  held-out rows, `indexed_training_batches`, `validation`). It returns None or an EpochEnd: figures for the log
  (added to the epoch's last step entry under "epoch_end") and `fresh_optimizer`, set when the method put the
  model back to earlier weights (JTT's stage 2 starts where stage 1 started, with a new optimizer): the loop then
  builds a new optimizer with the run's settings.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.errors import CheckpointError


@dataclass(frozen=True)
class EpochEnd:
    """What a method's epoch_end did: figures for the log, and whether the loop must start a fresh optimizer
    (the method reset the model's weights, so the optimizer's moments belong to weights that no longer exist)."""

    figures: dict[str, Any]
    fresh_optimizer: bool = False


class TrainingMethod(Protocol):
    name: str

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None: ...

    # Fills .grad of the trainable parameters for one batch, as a user's loop does between zero_grad() and step():
    # the loop owns the optimiser (zeroes before, steps after), so a method is the same component in any loop.
    # `share` scales a mean loss over the batch to this process's part of the global batch in a data-parallel run
    # (data_parallel.py; 1 in one process). The loop then averages the gradients over the processes, unless the
    # method's class sets `synchronised = True` (its components averaged what they combine themselves).
    # `loss_scale` is an fp16 run's gradient-scaler scale S (precision.py; passed only then, so a driver without the
    # keyword still trains in fp32 and bf16): the driver multiplies what it backpropagates by it (with `share`), its
    # gradients must be S times the unscaled ones (the loop divides by S before the step), and the losses it logs stay
    # unscaled. The loop runs the whole call under torch.autocast for bf16 and fp16.
    def gradients(
        self,
        model: nn.Module,
        adapter: Adapter,
        batch: Mapping[str, Any],
        *,
        step: int,
        total_steps: int,
        device: torch.device,
        share: float = 1.0,
        loss_scale: float = 1.0,
    ) -> dict[str, Any]: ...

    def export(self, model: nn.Module, adapter: Adapter) -> None: ...

    def settings(self) -> dict[str, Any]: ...

    # Training-only state outside the model (e.g. BalGrad's separate heads): optimised with the model,
    # saved with every epoch and restored on --resume, never exported.
    def extra_parameters(self) -> list[nn.Parameter]: ...

    def extra_state(self) -> dict[str, Any]: ...

    def load_extra_state(self, state: dict[str, Any]) -> None: ...

    # Optional (see the module docstring): `sample_index = True` for the SAMPLE_INDEX column;
    # `check_config(config)` refuses a TrainConfig the method cannot run under, before any work;
    # `epoch_end(model, view, *, epoch, epochs, device) -> EpochEnd | None` after each epoch.


def method_parameters(method: TrainingMethod) -> list[nn.Parameter]:
    """The method's training-only parameters; none for a method without the hook."""
    hook = getattr(method, "extra_parameters", None)
    return list(hook()) if callable(hook) else []


@contextmanager
def scored_as_trained(method: TrainingMethod, model: nn.Module, adapter: Adapter) -> Iterator[str | None]:
    """The block runs with the exported model scoring as the method trained it (MMDB's cosine logits), yielding
    the sentence an audit made inside it records; None and no change for a method whose export is exact."""
    hook = getattr(method, "as_trained", None)
    if not callable(hook):
        yield None
        return
    with hook(model, adapter) as note:
        yield note


def method_state(method: TrainingMethod) -> dict[str, Any]:
    hook = getattr(method, "extra_state", None)
    return dict(hook()) if callable(hook) else {}


def restore_method_state(method: TrainingMethod, state: dict[str, Any]) -> None:
    hook = getattr(method, "load_extra_state", None)
    if callable(hook):
        hook(state)
    elif state:
        raise CheckpointError(
            f"The training state to resume holds state of another method ({', '.join(state)}); "
            f"resume with the method that wrote it."
        )
