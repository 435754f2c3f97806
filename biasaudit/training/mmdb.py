"""MMDB's math: bias-adaptive margins, the cosine classifier, its loss, the scale bound, export (methods.md 6).

Pure functions, no training loop. The method (method_mmdb.MMDB) takes cosine logits against the rows of
the adapter's final `classifier(model)` (an nn.Linear fed by the fused feature), trains with `mmdb_loss`,
predicts with `inference_logits`, and exports by normalising that layer's rows in place.

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

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import entropy

from biasaudit.errors import DataError, InputError

SCALE_GRID: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
DEFAULT_EPS = 1e-6
DEFAULT_TARGET_PROBABILITY = 0.9  # Eq. 8's P: the true class should be able to reach 90% on a perfect feature
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

    def to_dict(self) -> dict:
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


def bias_margins(labels: np.ndarray, bias: np.ndarray, *, num_classes: int, num_bias: int,
                 eps: float = DEFAULT_EPS, min_count: int = 0, entropy_gate: float | None = None) -> MarginTable:
    """The margin table m_i^k from the training split's labels and bias values (module docstring)."""
    if num_classes < 2 or num_bias < 1:
        raise InputError(f"num_classes={num_classes}, num_bias={num_bias}: "
                         "expected at least 2 classes and 1 bias value.")
    if not eps > 0 or min_count < 0 or (entropy_gate is not None and not entropy_gate > 0):
        raise InputError(f"eps={eps}, min_count={min_count}, entropy_gate={entropy_gate}: expected eps > 0, "
                         "min_count >= 0 and entropy_gate > 0 or None.")
    labels = _integer_codes(labels, name="training labels", upper=num_classes)
    bias = _integer_codes(bias, name="training bias values", upper=num_bias)
    if labels.size == 0 or labels.shape != bias.shape:
        raise DataError("Need as many training labels as bias values, at least one: "
                        f"got {labels.size} and {bias.size}.")
    counts = np.zeros((num_bias, num_classes), dtype=np.int64)
    np.add.at(counts, (bias, labels), 1)
    kept = np.where(counts >= min_count, counts, 0).astype(np.float64)
    frequencies = (kept + eps) / (kept.sum(axis=1, keepdims=True) + eps)
    # scipy normalises each row; an empty row has no label distribution, so no entropy (0 bits).
    totals = kept.sum(axis=1)
    entropy_bits = np.array([entropy(row, base=2) if total > 0 else 0.0 for row, total in zip(kept, totals)])
    gated = entropy_bits >= entropy_gate if entropy_gate is not None else np.zeros(num_bias, dtype=bool)
    margins = np.where(gated[:, None], 0.0, 1.0 - frequencies)
    return MarginTable(margins=torch.tensor(margins, dtype=torch.float32), frequencies=frequencies,
                       counts=counts, entropy_bits=entropy_bits, gated=gated, eps=float(eps),
                       min_count=int(min_count), entropy_gate=None if entropy_gate is None else float(entropy_gate))


def mmdb_logits(cosines: torch.Tensor, bias: torch.Tensor, margins: torch.Tensor, *, scale: float) -> torch.Tensor:
    """Training logits z_i = s·(cos θ_i − m_i^{k(x)}) for every class i; margins is MarginTable.margins."""
    shapes_ok = cosines.ndim == 2 and margins.ndim == 2 and bias.shape == cosines.shape[:1]
    if not shapes_ok or cosines.shape[1] != margins.shape[1]:
        raise InputError(f"Expected cosines [B, C], bias [B] and margins [num_bias, C]; got {tuple(cosines.shape)}, "
                         f"{tuple(bias.shape)} and {tuple(margins.shape)}.")
    if bias.numel() and (int(bias.min()) < 0 or int(bias.max()) >= margins.shape[0]):
        raise DataError(f"Bias values must lie in 0..{margins.shape[0] - 1}, "
                        f"got {int(bias.min())} to {int(bias.max())}.")
    batch_margins = margins.to(device=cosines.device, dtype=cosines.dtype)[bias.long().to(cosines.device)]
    return scale * (cosines - batch_margins)


def mmdb_loss(cosines: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor, margins: torch.Tensor, *,
              scale: float) -> torch.Tensor:
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


def scale_lower_bound(margins_row: np.ndarray | torch.Tensor, class_index: int, *,
                      target_probability: float = DEFAULT_TARGET_PROBABILITY) -> float:
    """The paper's Eq. 8 bound on s for class i under one bias value, whose margins [C] are `margins_row`.

    Eq. 8 reads s >= ln(1/P − 1) / (m_i + Σ_{j≠i} m_j/(|C|−1) − 2), implemented as written (we do not
    re-derive it). We read it as s·D <= ln(1/P − 1) with D the denominator: for P > 1/2 the numerator
    is negative and for
    margins in [0, 1) D is negative too, so dividing by D flips the inequality into a positive lower
    bound ln(P/(1−P)) / (2 − m_i − mean_{j≠i} m_j). It grows as the margins approach 1: with
    margins from counts (Σ_j m_j ≈ |C| − 1) it runs from ln(P/(1−P)) (≈ 2.2 for P = 0.9) for a class
    that owns its bias value (m_i = 0) to (|C| − 1)·ln(P/(1−P)) for a class never seen with it.
    Returns a value <= 0 (no constraint) for P <= 1/2, and inf when D >= 0 (all margins 1: no
    positive s satisfies s·D <= ln(1/P − 1) < 0).
    """
    row = np.asarray(margins_row, dtype=np.float64).reshape(-1)
    num_classes = row.size
    if num_classes < 2 or not 0 <= class_index < num_classes:
        raise InputError(f"class_index={class_index} with {num_classes} margins: "
                         "expected 2+ margins and an index among them.")
    if not 0 < target_probability < 1:
        raise InputError(f"target_probability={target_probability}: expected a probability strictly between 0 and 1.")
    others = (row.sum() - row[class_index]) / (num_classes - 1)
    denominator = row[class_index] + others - 2.0
    if denominator >= 0:
        return math.inf
    return float(math.log(1.0 / target_probability - 1.0) / denominator)


def typical_scale_bound(table: MarginTable, *, target_probability: float = DEFAULT_TARGET_PROBABILITY) -> float:
    """Median of scale_lower_bound over the (class i, bias value k) pairs seen in training (n_i^k > 0)."""
    margins = table.margins.detach().cpu().numpy()
    bounds = [scale_lower_bound(margins[k], i, target_probability=target_probability)
              for k, i in zip(*np.nonzero(table.counts))]
    return float(np.median(bounds))


def check_scale(scale: float, table: MarginTable, *,
                target_probability: float = DEFAULT_TARGET_PROBABILITY) -> str | None:
    """A warning sentence when `scale` is below the typical Eq. 8 bound, else None.

    "Typical" is the median over the (class, bias value) pairs with training samples. On strongly
    biased data most pairs are bias-conflicting (margin near 1), whose bound approaches
    (|C| − 1)·ln(P/(1−P)), so small scales warn even where they train well (methods.md 6): the
    warning is advice for the record, not a reason to refuse.
    """
    if not scale > 0:
        raise InputError(f"scale={scale}: expected a positive number.")
    bound = typical_scale_bound(table, target_probability=target_probability)
    if scale >= bound:
        return None
    return (f"MMDB scale s={scale:g} is below {bound:.3g}, the lower bound of the paper's Eq. 8 (target "
            f"probability {target_probability:g}) for the median (class, bias value) pair of the training split; "
            f"the paper links too small a scale to under-fitting.")


def bias_balanced_accuracy(predictions: np.ndarray, labels: np.ndarray, bias: np.ndarray, *,
                           min_group: int = 5) -> float:
    """Mean accuracy (percent) over the (label, bias value) groups with at least `min_group` samples.

    Every group weighs the same, so the rare bias-conflicting groups count as much as the common
    aligned ones; this is what `--scale auto` ranks the candidate scales by.
    """
    predictions, labels, bias = (np.asarray(a).reshape(-1) for a in (predictions, labels, bias))
    if not predictions.size == labels.size == bias.size:
        raise DataError("Need as many predictions, labels and bias values: "
                        f"got {predictions.size}, {labels.size}, {bias.size}.")
    if min_group < 1:
        raise InputError(f"min_group={min_group}: expected a positive integer.")
    groups, group_of, sizes = np.unique(np.stack([labels, bias], axis=1), axis=0, return_inverse=True, return_counts=True)
    correct = np.bincount(group_of.reshape(-1), weights=(predictions == labels).astype(np.float64), minlength=len(groups))
    large = sizes >= min_group
    if not large.any():
        raise DataError(f"No (label, bias value) group has at least min_group={min_group} samples; "
                        "use a larger validation split or a smaller min_group.")
    return float(100.0 * np.mean(correct[large] / sizes[large]))
