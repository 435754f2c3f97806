"""The output of one branch module over a whole split, with the labels and the model's probabilities: what k-means bias
discovery clusters (methods.md section 3), in the scan and in training's MMDB alike."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import checked_labels


def branch_outputs(
    model: nn.Module, adapter: Adapter, branch: nn.Module, split: str, *, device: torch.device, batch_size: int
) -> dict[str, np.ndarray]:
    """{"embedding": [N, D] float64 branch outputs, "label": [N], "probabilities": [N, C] softmax of the logits}."""
    captured: list[np.ndarray] = []
    handle = branch.register_forward_hook(
        lambda module, args, output: captured.append(output.detach().flatten(1).double().cpu().numpy())
    )
    labels, probabilities = [], []
    try:
        with torch.no_grad():
            for batch in adapter.data(split, batch_size=batch_size):
                logits = adapter.forward(model, adapter.prepare(batch, device=device))
                labels.append(checked_labels(batch, adapter, split=split))
                probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    finally:
        handle.remove()
    return {
        "embedding": np.concatenate(captured),
        "label": np.concatenate(labels),
        "probabilities": np.concatenate(probabilities),
    }
