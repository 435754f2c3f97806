"""MMDB in `fix`: the choice of the scale s (methods.md section 6) and the names older code imports from here. The
margins, the loss and the inference logits live in biasaudit/methods/_mmdb_math.py, the component for any loop in
biasaudit/methods/mmdb.py.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from biasaudit.errors import DataError, InputError
from biasaudit.methods._mmdb_math import (
    DEFAULT_EPS,
    NORM_EPS,
    MarginTable,
    bias_margins,
    inference_logits,
    mmdb_logits,
    mmdb_loss,
)

SCALE_GRID: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
DEFAULT_TARGET_PROBABILITY = 0.9  # Eq. 8's P: the true class should be able to reach 90% on a perfect feature

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_TARGET_PROBABILITY",
    "NORM_EPS",
    "SCALE_GRID",
    "MarginTable",
    "bias_balanced_accuracy",
    "bias_margins",
    "check_scale",
    "inference_logits",
    "mmdb_logits",
    "mmdb_loss",
    "scale_lower_bound",
    "typical_scale_bound",
]


def scale_lower_bound(
    margins_row: np.ndarray | torch.Tensor, class_index: int, *, target_probability: float = DEFAULT_TARGET_PROBABILITY
) -> float:
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
        raise InputError(f"class_index={class_index} with {num_classes} margins: expected 2+ margins and an index among them.")
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
    bounds = [
        scale_lower_bound(margins[k], i, target_probability=target_probability)
        for k, i in zip(*np.nonzero(table.counts), strict=True)
    ]
    return float(np.median(bounds))


def check_scale(scale: float, table: MarginTable, *, target_probability: float = DEFAULT_TARGET_PROBABILITY) -> str | None:
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
    return (
        f"MMDB scale s={scale:g} is below {bound:.3g}, the lower bound of the paper's Eq. 8 (target "
        f"probability {target_probability:g}) for the median (class, bias value) pair of the training split; "
        f"the paper links too small a scale to under-fitting."
    )


def bias_balanced_accuracy(predictions: np.ndarray, labels: np.ndarray, bias: np.ndarray, *, min_group: int = 5) -> float:
    """Mean accuracy (percent) over the (label, bias value) groups with at least `min_group` samples.

    Every group weighs the same, so the rare bias-conflicting groups count as much as the common
    aligned ones; this is what `--scale auto` ranks the candidate scales by.
    """
    predictions, labels, bias = (np.asarray(a).reshape(-1) for a in (predictions, labels, bias))
    if not predictions.size == labels.size == bias.size:
        raise DataError(f"Need as many predictions, labels and bias values: got {predictions.size}, {labels.size}, {bias.size}.")
    if min_group < 1:
        raise InputError(f"min_group={min_group}: expected a positive integer.")
    groups, group_of, sizes = np.unique(np.stack([labels, bias], axis=1), axis=0, return_inverse=True, return_counts=True)
    correct = np.bincount(group_of.reshape(-1), weights=(predictions == labels).astype(np.float64), minlength=len(groups))
    large = sizes >= min_group
    if not large.any():
        raise DataError(
            f"No (label, bias value) group has at least min_group={min_group} samples; "
            "use a larger validation split or a smaller min_group."
        )
    return float(100.0 * np.mean(correct[large] / sizes[large]))
