"""`balgrad`: gradient reweighting and projection (methods.md section 7) in biasaudit's loop, with the spec's switches:
the adapter-bound wrapper over the components biasaudit.methods.balgrad.BalGrad (the step) and
biasaudit.methods.heads.UnimodalHeads (the head modes shared_zero, ogm_split, separate; their docstring says how each
is computed), so that `fix` and a user's own loop write the same gradients.

The adapter's branches(model) names the two branches, its classifier(model) the ogm_split layer (branch_heads.py,
shared with OGM-GE and MMPareto). KL weights (`weights`,
methods.md 7.4): `batch` from this batch's detached L_v, L_l; `running` from their exponential moving averages
(momentum 0.9). The separate heads and the running averages are training state: the loop puts the heads in the
optimizer (`extra_parameters`) and saves/restores both with every epoch (`extra_state`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.errors import CheckpointError, InputError
from biasaudit.methods import _balgrad_math as bg
from biasaudit.methods.balgrad import RUNNING_MOMENTUM, WEIGHT_MODES
from biasaudit.methods.balgrad import BalGrad as BalGradComponent
from biasaudit.methods.heads import HEAD_MODES
from biasaudit.training.branch_heads import BranchHeads
from biasaudit.training.method_ce import train_labels

__all__ = ["HEAD_MODES", "RUNNING_MOMENTUM", "WEIGHT_MODES", "BalGrad"]


def _choice(value: str, allowed: tuple[str, ...], *, what: str, option: str) -> None:
    if value not in allowed:
        raise InputError(f"{option} is {value!r}, an unknown BalGrad {what}. Available: {', '.join(allowed)}.")


@dataclass
class BalGrad:
    lambda_initial: float = 0.1
    schedule: str = "linear"
    beta: float = 1.0
    kl_mode: str = "mutual"
    projection: str = "global"
    head_mode: str = "shared_zero"
    weights: str = "batch"
    name: str = "balgrad"
    # The gradients it leaves are the same on every process (it averages them): the loop adds no average.
    synchronised: ClassVar[bool] = True

    def __post_init__(self) -> None:
        """Refuse bad options, named by their CLI flags, before any audit or training runs."""
        _choice(self.schedule, bg.SCHEDULES, what="λ schedule", option="schedule")
        _choice(self.kl_mode, bg.KL_MODES, what="KL mode", option="kl_mode")
        _choice(self.projection, bg.PROJECTIONS, what="projection", option="projection")
        _choice(self.head_mode, HEAD_MODES, what="head mode", option="head_mode")
        _choice(self.weights, WEIGHT_MODES, what="KL weights", option="weights")
        if not (
            isinstance(self.lambda_initial, (int, float)) and math.isfinite(self.lambda_initial) and 0 <= self.lambda_initial <= 1
        ):
            raise InputError(
                f"lambda_initial is {self.lambda_initial!r}; expected a number between 0 and 1 (BalGrad's initial λ)."
            )
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise InputError(f"beta is {self.beta!r}; expected a finite number >= 0 (BalGrad's β).")
        self._heads = BranchHeads("BalGrad", self.head_mode, exactly_two=True)
        self._step: BalGradComponent | None = None

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        """Build the heads (branch_heads.BranchHeads) and the step for this model."""
        branches = self._heads.prepare(model, adapter, device=device)
        # θ_T is every trainable parameter outside the branches, in the model's order (split_parameters), as before.
        self._step = BalGradComponent(
            branches,
            lambda_initial=self.lambda_initial,
            schedule=self.schedule,
            beta=self.beta,
            kl_mode=self.kl_mode,
            projection=self.projection,
            weights=self.weights,
            model=model,
        )

    def check(self, model: nn.Module, adapter: Adapter) -> dict[str, nn.Module]:
        """The two branch modules, or the AdapterError that stops the run before any audit or training."""
        return self._heads.check(model, adapter)

    def logits(self, model, adapter, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(fused logits, unimodal logits {v: o_v, l: o_l}) under the head mode."""
        return self._heads.logits(model, adapter, inputs)

    def gradients(self, model, adapter, batch, *, step, total_steps, device, share=1.0, loss_scale=1.0) -> dict[str, Any]:
        assert self._step is not None, "prepare() first"
        labels = train_labels(batch, adapter, device)
        logits, unimodal = self.logits(model, adapter, adapter.prepare(batch, device=device))
        # The KL terms in float32, as CUDA's autocast computes log_softmax: CPU autocast leaves it in 16 bits, where
        # fp16's loss scale overflows the KL's backward (S = 65536 > float16's largest 65504). A no-op in fp32.
        unimodal = {m: o.float() for m, o in unimodal.items()}
        # share (data_parallel.py) and fp16's loss_scale (precision.py) scale the fused loss and, as the component's
        # loss_scale, the unimodal and KL losses alike; the weights and the projection are scale-free, so the gradients
        # are the unscaled ones times the factor. The component averages the gradients and losses over the processes.
        factor = share * loss_scale
        record = self._step.backward(
            F.cross_entropy(logits, labels) * factor, unimodal, labels, step=step, total_steps=total_steps, loss_scale=factor
        )
        return {"loss": record.loss_task, **record.to_dict()}

    def extra_parameters(self) -> list[nn.Parameter]:
        """Training-only parameters the optimizer must also update: the separate heads'."""
        return self._heads.parameters()

    def extra_state(self) -> dict[str, Any]:
        heads = self._heads.state()
        running = self._step.state_dict()["running"] if self._step is not None else None
        return {"head_mode": self.head_mode, "weights": self.weights, "heads": heads, "running": running}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the heads and running averages of an interrupted run (after `prepare`)."""
        assert self._step is not None, "prepare() first"
        # A state without the method section was written before head modes existed: the defaults.
        recorded = (state.get("head_mode", "shared_zero"), state.get("weights", "batch"))
        if recorded != (self.head_mode, self.weights):
            raise CheckpointError(
                f"The training state to resume was written with BalGrad head mode {recorded[0]!r} and "
                f"weights {recorded[1]!r}, not {self.head_mode!r} and {self.weights!r}; resume with the same options."
            )
        self._heads.load_state(state.get("heads", {}))
        self._step.load_state_dict({"weights": self.weights, "running": state.get("running")})

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        pass  # the unimodal heads are training-only and never were part of the model

    def settings(self) -> dict[str, Any]:
        return {
            "lambda_initial": self.lambda_initial,
            "schedule": self.schedule,
            "beta": self.beta,
            "kl_mode": self.kl_mode,
            "projection": self.projection,
            "head_mode": self.head_mode,
            "weights": self.weights,
            "weights_momentum": RUNNING_MOMENTUM if self.weights == "running" else None,
            **self._heads.settings(),
        }  # its modalities: v, l of the logs, in this order
