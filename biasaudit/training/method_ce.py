"""`ce`: plain cross-entropy fine-tuning under the shared loop, the honest control for every comparison."""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import checked_labels


def train_labels(batch: Mapping[str, Any], adapter: Adapter, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(checked_labels(batch, adapter, split="train")).to(device)


class CrossEntropy:
    name = "ce"

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None:
        pass

    def gradients(self, model, adapter, batch, *, step, total_steps, device, share=1.0, loss_scale=1.0) -> dict[str, Any]:
        logits = adapter.forward(model, adapter.prepare(batch, device=device))
        loss = F.cross_entropy(logits, train_labels(batch, adapter, device))
        (loss * (share * loss_scale)).backward()  # share: data_parallel.py; loss_scale: fp16's (precision.py)
        return {"loss": float(loss.detach())}

    def export(self, model: nn.Module, adapter: Adapter) -> None:
        pass

    def settings(self) -> dict[str, Any]:
        return {}
