"""`jtt`: Just Train Twice (methods.md section 8) in fix's loop, calling biasaudit.methods.JTT exactly as a user's
loop does. It needs no bias value.

    stage 1  epochs 0 .. T1 - 1 (T1 = JTT.stage_one_epochs(epochs), `fraction` of them): plain ERM, the mean
             cross-entropy
    end of   a pass over the training split (without held-out rows) in eval mode, no gradient: `jtt.record` per
    epoch    batch, `jtt.finish()` gives the error set E; the model goes back to its weights at the start of the
    T1 - 1   run and the loop starts a fresh optimizer (EpochEnd.fresh_optimizer)
    stage 2  the remaining epochs: `jtt.loss(per_sample_ce, sample_indices)`, E weighted by `upweight`

Samples are named by the loop's SAMPLE_INDEX column (global train indices). The error set and the stage are saved
with the training state, so --resume continues stage 2 with the same E; both stages must get at least one epoch."""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import checked_labels
from biasaudit.errors import CheckpointError, InputError
from biasaudit.methods.jtt import JTT as JTTParts
from biasaudit.methods._modes import evaluation_modes
from biasaudit.training.driver import EpochEnd
from biasaudit.training.epoch_batches import SAMPLE_INDEX, without_index
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.method_ce import train_labels


def option_errors(make: Callable[[], Any], *options: str) -> Any:
    """make(), with a refused component parameter named as fix's option ("upweight is 0; expected ..."), the form the
    command line names by its flag (cli/fix.py)."""
    try:
        return make()
    except InputError as exc:
        text = str(exc)
        for option in options:
            if text.startswith(f"The {option!r} parameter of ") and "; expected " in text:
                raise InputError(f"{option} is {text.split(' is ', 1)[1]}") from exc
        raise


RECORD_BATCH_SIZE = 256  # the error-set pass: no gradient, so larger batches than training's


class JTT:
    name = "jtt"
    # "auto" chooses the up-weight λ on validation data from this grid (selection.py): around the default 10 (the paper
    # searches 5-100 with more epochs than a fine-tuning).
    option_grid = ("upweight", (5.0, 10.0, 20.0))
    sample_index = True  # the loop adds SAMPLE_INDEX to every training batch

    def __init__(self, *, upweight: float = 10.0, fraction: float = 0.5) -> None:
        self.parts = option_errors(lambda: JTTParts(upweight=upweight, fraction=fraction), "upweight", "fraction")
        self.upweight, self.fraction = float(upweight), float(fraction)
        self.stage = 1
        self._start: dict[str, torch.Tensor] | None = None

    def check_config(self, config: TrainConfig) -> None:
        first = self.parts.stage_one_epochs(config.epochs)
        if first >= config.epochs:
            raise InputError(
                f"JTT with {config.epochs} epoch(s) and a stage-1 fraction of {self.fraction:g} gives stage 1 all {first} "
                "epoch(s) and stage 2 none; expected at least 2 epochs and a fraction that leaves stage 2 one or more."
            )

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        # Stage 2 starts where stage 1 started: the run's starting weights (buffers included), kept on the CPU.
        self._start = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}

    def gradients(self, model, adapter, batch, *, step, total_steps, device, share=1.0, loss_scale=1.0) -> dict[str, Any]:
        labels = train_labels(batch, adapter, device)
        logits = adapter.forward(model, adapter.prepare(without_index(batch), device=device))
        if self.stage == 1:
            loss = F.cross_entropy(logits, labels)
            (loss * (share * loss_scale)).backward()  # share: data_parallel.py; loss_scale: fp16's (precision.py)
        else:  # the component normalises by the global weight itself, for the processes' average
            loss = self.parts.loss(F.cross_entropy(logits, labels, reduction="none"), batch[SAMPLE_INDEX].to(device))
            (loss * loss_scale).backward()
        errors = self.parts.error_set
        return {
            "loss": float(loss.detach()),
            "stage": self.stage,
            "error_set": None if errors is None else int(errors.indices.numel()),
        }

    def epoch_end(self, model: nn.Module, adapter: Any, *, epoch: int, epochs: int, device: torch.device) -> EpochEnd | None:
        if self.stage != 1 or epoch + 1 != self.parts.stage_one_epochs(epochs):
            return None
        start = self._start
        if start is None:
            raise RuntimeError("JTT reached the end of stage 1 before prepare(model, adapter, device=...).")
        with evaluation_modes(model), torch.no_grad():
            for batch in adapter.indexed_training_batches(batch_size=RECORD_BATCH_SIZE):
                logits = adapter.forward(model, adapter.prepare(without_index(batch), device=device))
                labels = torch.as_tensor(checked_labels(batch, adapter, split="train"))
                self.parts.record(batch[SAMPLE_INDEX], logits, labels)
        errors = self.parts.finish()
        model.load_state_dict(start)
        self.stage = 2
        return EpochEnd(
            figures={
                "jtt": {
                    "stage_one_epochs": epoch + 1,
                    "error_set": int(errors.indices.numel()),
                    "recorded": errors.recorded,
                    "error_rate": errors.error_rate,
                    "restart": "stage 2 starts from the run's starting weights with a fresh optimizer",
                }
            },
            fresh_optimizer=True,
        )

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        pass

    def settings(self) -> dict[str, Any]:
        return {"upweight": self.upweight, "fraction": self.fraction, "loss": "stage 2: sum(w l) / sum(w) per batch"}

    def extra_state(self) -> dict[str, Any]:
        return {"jtt_stage": self.stage, "jtt": self.parts.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "jtt" not in state or state.get("jtt_stage") not in (1, 2):
            raise CheckpointError(
                "The training state to resume holds no JTT stage and error set; resume with the method that wrote it."
            )
        self.parts.load_state_dict(state["jtt"])
        self.stage = int(state["jtt_stage"])
