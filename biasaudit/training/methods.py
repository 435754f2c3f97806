"""The `fix` methods as small objects the training loop drives, in one explicit registry.

ce       plain cross-entropy fine-tuning: the honest control for every comparison.
mmdb     adaptive-margin cosine loss (methods.md section 6): margins from train counts of label under
         bias value; cosine logits against the model's own final nn.Linear (its input is captured by a
         hook), so no module is swapped and the export is an in-place normalisation of that layer.
balgrad  gradient reweighting and projection (methods.md section 7), `shared_zero` unimodal heads:
         the other modality's branch output is replaced by zeros through a forward hook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.adapter import Adapter, optional_hook
from biasaudit.batches import bias_range, checked_labels, int_column, labels_and_bias
from biasaudit.errors import AdapterError, InputError
from biasaudit.training import balgrad as bg
from biasaudit.training import mmdb


def require_bias(adapter: Adapter) -> None:
    if adapter.bias_key is None:
        raise AdapterError("MMDB needs a bias value per sample (the adapter's bias_key); this adapter declares none.")


def _labels(batch: Mapping[str, Any], adapter: Adapter, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(checked_labels(batch, adapter, split="train")).to(device)


class CrossEntropy:
    name = "ce"

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        pass

    def step(self, model, adapter, batch, *, optimizer, step, total_steps, device) -> dict[str, Any]:
        optimizer.zero_grad(set_to_none=True)
        logits = adapter.forward(model, adapter.prepare(batch, device=device))
        loss = F.cross_entropy(logits, _labels(batch, adapter, device))
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach())}

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        pass

    def settings(self) -> dict[str, Any]:
        return {}


class _InputTap:
    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0]


@dataclass
class MMDB:
    scale: float = 4.0
    min_count: int = 0
    entropy_gate: float | None = None
    name: str = "mmdb"
    table: mmdb.MarginTable | None = field(default=None, repr=False)
    warning: str | None = None

    def _classifier(self, model: nn.Module, adapter: Adapter) -> nn.Linear:
        linear = optional_hook(adapter, "classifier", model)
        if not isinstance(linear, nn.Linear):
            raise AdapterError("MMDB needs the adapter's classifier(model) hook to return the model's final nn.Linear.")
        return linear

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        require_bias(adapter)
        labels_all, bias_all = labels_and_bias(adapter, "train", batch_size=1024, purpose="MMDB's margins")
        num_bias = bias_range(adapter, bias_all)
        self.table = mmdb.bias_margins(labels_all, bias_all, num_classes=adapter.num_classes, num_bias=num_bias,
                                       min_count=self.min_count, entropy_gate=self.entropy_gate)
        self.warning = mmdb.check_scale(self.scale, self.table)
        self._margins = self.table.margins.to(device)
        self._linear = self._classifier(model, adapter)

    def cosines(self, model: nn.Module, adapter: Adapter, batch: Mapping[str, Any], *, device: torch.device) -> torch.Tensor:
        tap = _InputTap()
        handle = self._linear.register_forward_pre_hook(tap)
        try:
            adapter.forward(model, adapter.prepare(batch, device=device))
        finally:
            handle.remove()
        features = tap.value.flatten(1)
        return F.normalize(features, dim=1, eps=mmdb.NORM_EPS) @ F.normalize(self._linear.weight, dim=1, eps=mmdb.NORM_EPS).T

    def step(self, model, adapter, batch, *, optimizer, step, total_steps, device) -> dict[str, Any]:
        optimizer.zero_grad(set_to_none=True)
        cos = self.cosines(model, adapter, batch, device=device)
        bias = torch.as_tensor(int_column(batch, adapter.bias_key, what="bias", split="train")).to(device)
        loss = mmdb.mmdb_loss(cos, _labels(batch, adapter, device), bias, self._margins, scale=self.scale)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach())}

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        """Normalised rows, zero bias: the original architecture predicts argmax cos θ (methods.md section 6)."""
        linear = self._classifier(model, adapter)
        with torch.no_grad():
            linear.weight.copy_(F.normalize(linear.weight, dim=1, eps=mmdb.NORM_EPS))
            if linear.bias is not None:
                linear.bias.zero_()

    def settings(self) -> dict[str, Any]:
        return {"scale": self.scale, "min_count": self.min_count, "entropy_gate": self.entropy_gate,
                "scale_warning": self.warning, "margins": self.table.to_dict() if self.table else None}


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
        labels = _labels(batch, adapter, device)
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


METHODS = {"ce": CrossEntropy, "mmdb": MMDB, "balgrad": BalGrad}


def make_method(name: str, **options: Any):
    if name not in METHODS:
        raise InputError(f"Unknown method {name!r}. Available: {', '.join(METHODS)}.")
    try:
        return METHODS[name](**options)
    except TypeError as exc:
        raise InputError(f"Method {name!r} does not take these options: {exc}.") from exc
