"""`mmdb`: the adaptive-margin cosine loss (methods.md section 6). Margins come from train counts of
label under bias value; cosine logits are taken against the model's own final nn.Linear (its input is
captured by a hook), so no module is swapped and the export is an in-place normalisation of that layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.adapter import Adapter, optional_hook
from biasaudit.batches import bias_range, int_column, labels_and_bias
from biasaudit.errors import AdapterError
from biasaudit.training import mmdb
from biasaudit.training.method_ce import train_labels


def require_bias(adapter: Adapter) -> None:
    if adapter.bias_key is None:
        raise AdapterError("MMDB needs a bias value per sample (the adapter's bias_key); this adapter declares none.")


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
        loss = mmdb.mmdb_loss(cos, train_labels(batch, adapter, device), bias, self._margins, scale=self.scale)
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


