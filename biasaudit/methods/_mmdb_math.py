"""MMDB's math (methods.md section 6): the bias-adaptive margin table, the training logits and loss of the cosine
classifier, and its inference logits. Pure functions over tensors and arrays; the component for any loop is
methods.mmdb.MMDB, and biasaudit's loop reaches it through training/method_mmdb.py.

Margins. From the TRAINING split, n_i^k counts the samples of label i with bias value k;
n̄_i^k = (n_i^k + eps) / (Σ_j n_j^k + eps) and m_i^k = 1 − n̄_i^k. The eps sits in both numerator
and denominator, so a bias value never seen in training gets n̄ = eps/eps = 1 for every class and
hence all-zero margins (plain scaled cosine), and an unseen label under a seen bias value gets
n̄ ≈ 0, margin ≈ 1. Switches of the released AdaVQA code:
- `min_count`: a label with fewer than `min_count` samples under k is ignored: its count is
  treated as 0 in n̄ (numerator and denominator), so its margin is ≈ 1 like an unseen label. The raw
  counts stay in `MarginTable.counts`.
- `entropy_gate`: a bias value whose label distribution (after `min_count`) has an entropy in bits
  >= the gate carries no shortcut worth removing; its margins are all set to 0. (The released code
  sets its frequencies to 0, i.e. margins 1; a margin that is the same for every class cancels in
  the softmax, so both choices train identically.)

MMDB as logit adjustment: s·(cos θ_i − m_i^k) = s·cos θ_i + s·n̄_i^k − s, and the constant −s
cancels in the softmax, so the loss equals cross-entropy on s·cos θ + s·n̄ (a training-only prior).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import entropy

from biasaudit._core.arguments import checked
from biasaudit.errors import DataError, InputError

DEFAULT_EPS = 1e-6
NORM_EPS = 1e-8  # a norm below this is treated as this; a zero vector then has cos θ = 0 for every class


@dataclass(frozen=True, eq=False)
class MarginTable:
    margins: torch.Tensor  # float32 [num_bias, C]: m_i^k, zero rows for gated bias values
    frequencies: np.ndarray  # float64 [num_bias, C]: n̄_i^k (before the entropy gate)
    counts: np.ndarray  # int64 [num_bias, C]: raw n_i^k of the training split
    entropy_bits: np.ndarray  # float64 [num_bias]: label entropy of each bias value (after min_count)
    gated: np.ndarray  # bool [num_bias]: bias values whose margins the entropy gate zeroed
    eps: float
    min_count: int
    entropy_gate: float | None

    @property
    def num_bias(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[1])

    @checked("MarginTable.to_dict")
    def to_dict(self) -> dict[str, Any]:
        return {
            "num_bias": self.num_bias,
            "num_classes": self.num_classes,
            "eps": self.eps,
            "min_count": self.min_count,
            "entropy_gate": self.entropy_gate,
            "counts": self.counts.tolist(),
            "frequencies": self.frequencies.tolist(),
            "margins": self.margins.tolist(),
            "entropy_bits": self.entropy_bits.tolist(),
            "gated_bias_values": np.flatnonzero(self.gated).tolist(),
        }


def _integer_codes(values: np.ndarray, *, name: str, upper: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise DataError(f"The {name} must be a 1-D array of integers, got dtype {array.dtype} and shape {array.shape}.")
    if array.size and (array.min() < 0 or array.max() >= upper):
        raise DataError(f"The {name} must lie in 0..{upper - 1}, got values from {array.min()} to {array.max()}.")
    return array.astype(np.int64)


def bias_margins(
    labels: np.ndarray,
    bias: np.ndarray,
    *,
    num_classes: int,
    num_bias: int,
    eps: float = DEFAULT_EPS,
    min_count: int = 0,
    entropy_gate: float | None = None,
) -> MarginTable:
    """The margin table m_i^k from the training split's labels and bias values (module docstring)."""
    if num_classes < 2 or num_bias < 1:
        raise InputError(f"num_classes={num_classes}, num_bias={num_bias}: expected at least 2 classes and 1 bias value.")
    if not eps > 0 or min_count < 0 or (entropy_gate is not None and not entropy_gate > 0):
        raise InputError(
            f"eps={eps}, min_count={min_count}, entropy_gate={entropy_gate}: expected eps > 0, "
            "min_count >= 0 and entropy_gate > 0 or None."
        )
    labels = _integer_codes(labels, name="training labels", upper=num_classes)
    bias = _integer_codes(bias, name="training bias values", upper=num_bias)
    if labels.size == 0 or labels.shape != bias.shape:
        raise DataError(f"Need as many training labels as bias values, at least one: got {labels.size} and {bias.size}.")
    counts = np.zeros((num_bias, num_classes), dtype=np.int64)
    np.add.at(counts, (bias, labels), 1)
    kept = np.where(counts >= min_count, counts, 0).astype(np.float64)
    frequencies = (kept + eps) / (kept.sum(axis=1, keepdims=True) + eps)
    # scipy normalises each row; an empty row has no label distribution, so no entropy (0 bits).
    totals = kept.sum(axis=1)
    entropy_bits = np.array([entropy(row, base=2) if total > 0 else 0.0 for row, total in zip(kept, totals, strict=True)])
    gated = entropy_bits >= entropy_gate if entropy_gate is not None else np.zeros(num_bias, dtype=bool)
    margins = np.where(gated[:, None], 0.0, 1.0 - frequencies)
    return MarginTable(
        margins=torch.tensor(margins, dtype=torch.float32),
        frequencies=frequencies,
        counts=counts,
        entropy_bits=entropy_bits,
        gated=gated,
        eps=float(eps),
        min_count=int(min_count),
        entropy_gate=None if entropy_gate is None else float(entropy_gate),
    )


def mmdb_logits(cosines: torch.Tensor, bias: torch.Tensor, margins: torch.Tensor, *, scale: float) -> torch.Tensor:
    """Training logits z_i = s·(cos θ_i − m_i^{k(x)}) for every class i; margins is MarginTable.margins."""
    shapes_ok = cosines.ndim == 2 and margins.ndim == 2 and bias.shape == cosines.shape[:1]
    if not shapes_ok or cosines.shape[1] != margins.shape[1]:
        raise InputError(
            f"Expected cosines [B, C], bias [B] and margins [num_bias, C]; got {tuple(cosines.shape)}, "
            f"{tuple(bias.shape)} and {tuple(margins.shape)}."
        )
    if bias.numel() and (int(bias.min()) < 0 or int(bias.max()) >= margins.shape[0]):
        raise DataError(f"Bias values must lie in 0..{margins.shape[0] - 1}, got {int(bias.min())} to {int(bias.max())}.")
    batch_margins = margins.to(device=cosines.device, dtype=cosines.dtype)[bias.long().to(cosines.device)]
    return scale * (cosines - batch_margins)


def mmdb_loss(
    cosines: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor, margins: torch.Tensor, *, scale: float
) -> torch.Tensor:
    """Mean softmax cross-entropy on mmdb_logits; targets are class indices [B] or soft targets float [B, C]."""
    logits = mmdb_logits(cosines, bias, margins, scale=scale)
    if targets.is_floating_point() and targets.shape != logits.shape:
        raise InputError(f"Soft targets must have the logits' shape {tuple(logits.shape)}, got {tuple(targets.shape)}.")
    if not targets.is_floating_point() and targets.shape != logits.shape[:1]:
        raise InputError(f"Class-index targets must have shape {tuple(logits.shape[:1])}, got {tuple(targets.shape)}.")
    if targets.is_floating_point():
        targets = targets.to(dtype=logits.dtype)
    targets = targets.to(logits.device)
    return F.cross_entropy(logits, targets)


def inference_logits(cosines: torch.Tensor, *, scale: float) -> torch.Tensor:
    """Logits at test time: s·cos θ, no margin (the bias value is not needed, nor known, at test time)."""
    return scale * cosines
