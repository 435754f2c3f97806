"""`balgrad`: gradient reweighting and projection (methods.md section 7). Unimodal heads are
`shared_zero` passes of the model itself: the other modality's branch output is replaced by zeros
through a forward hook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.adapter import Adapter, optional_hook
from biasaudit.errors import AdapterError
from biasaudit.training import balgrad as bg
from biasaudit.training.method_ce import train_labels


class _ZeroOutput:
    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(output)


@dataclass
class BalGrad:
    lambda_initial: float = 0.1
    schedule: str = "linear"
    beta: float = 1.0
    kl_mode: str = "mutual"
    projection: str = "global"
    name: str = "balgrad"

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        branches = optional_hook(adapter, "branches", model)
        if not branches or len(branches) != 2:
            raise AdapterError("BalGrad needs the adapter's branches(model) hook to return the two per-modality branch modules, "
                               "e.g. {'image': model.image_branch, 'text': model.text_branch}.")
        self._branches = dict(branches)
        self._task_params, self._branch_params = bg.split_parameters(model, self._branches)

    def _logits(self, model, adapter, inputs, *, zero: str | None) -> torch.Tensor:
        handle = self._branches[zero].register_forward_hook(_ZeroOutput()) if zero else None
        try:
            return adapter.forward(model, inputs)
        finally:
            if handle is not None:
                handle.remove()

    def step(self, model, adapter, batch, *, optimizer, step, total_steps, device) -> dict[str, Any]:
        optimizer.zero_grad(set_to_none=True)
        labels = train_labels(batch, adapter, device)
        inputs = adapter.prepare(batch, device=device)
        task_loss = F.cross_entropy(self._logits(model, adapter, inputs, zero=None), labels)
        v, l = list(self._branches)
        # shared_zero: o_v = f_T(fuse(z_v, 0)). balgrad_step differentiates these only w.r.t. the
        # branches, which is what a detached copy of θ_T gives.
        unimodal = {v: self._logits(model, adapter, inputs, zero=l), l: self._logits(model, adapter, inputs, zero=v)}
        unimodal_losses = {m: F.cross_entropy(o, labels) for m, o in unimodal.items()}
        kl_terms = bg.mutual_kl(unimodal, mode=self.kl_mode)
        lam = bg.LambdaSchedule(kind=self.schedule, initial=self.lambda_initial, total_steps=total_steps).at(step)
        record = bg.balgrad_step(task_loss, unimodal_losses, kl_terms, task_params=self._task_params,
                                 branch_params=self._branch_params, lam=lam, beta=self.beta, projection=self.projection)
        optimizer.step()
        return {"loss": record.loss_task, **record.to_dict()}

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        pass  # unimodal heads are shared_zero passes of the model itself: nothing extra to drop

    def settings(self) -> dict[str, Any]:
        return {"lambda_initial": self.lambda_initial, "schedule": self.schedule, "beta": self.beta,
                "kl_mode": self.kl_mode, "projection": self.projection, "head_mode": "shared_zero"}


