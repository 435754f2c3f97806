"""The classes a bias value favours, F(k) (methods.md section 9), and what they make of a sample.

A bias value rarely points at one class: a question type favours two answers, a skin tone two occupations,
a background several species. Reading only the single most frequent class then calls half of the shortcut's
samples "conflicting" and hides the shortcut from every group measure (on data where each bias value
favoured two classes equally, the argmax reading gave a training aligned share of 51% where the truth was
98%). So F(k) is every class whose share of k's training samples is at least `fraction` of the largest
share and above the uniform share 1/C: a bias value with a flat prior favours nothing.

A sample is *aligned* when its label is in F(k), *conflicting* when F(k) is not empty and its label is not
in it, and *neutral* when its bias value favours no class or never occurs in train (the shortcut can neither
help nor mislead it).
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import numpy as np

# A class within this fraction of the most frequent class of a bias value is favoured too. At 0.5 a bias
# value whose two top classes hold 60% and 35% of its samples favours both; one at 90% / 5% favours one.
DEFAULT_FAVOURED_FRACTION = 0.5
# Under the single-argmax reading of earlier audits, a bias value whose second share is this close to its first
# was read as favouring one class almost by chance: the audit warns so a reader of an old audit knows.
NEAR_TIE_RATIO = 0.8
_TOLERANCE = 1e-9

ALIGNED, CONFLICTING, NEUTRAL = 0, 1, 2
ALIGNMENT_NAMES = ("aligned", "conflicting", "neutral")


def favoured_classes(prior_counts: np.ndarray, *, fraction: float = DEFAULT_FAVOURED_FRACTION) -> np.ndarray:
    """[K, C] bool: F(k) per bias value k from the train split's label-under-bias counts."""
    counts = np.asarray(prior_counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, counts / totals, 0.0)
    top = shares.max(axis=1, keepdims=True) if shares.size else shares
    uniform = 1.0 / counts.shape[1] if counts.ndim == 2 and counts.shape[1] else 1.0
    # Relative tolerances on both sides, as the shares are ratios of integers: 8 of 10 is at 0.8 of the largest, though
    # 0.8 * 10 is a hair above 8 in floating point, and 1/3 from counts (1, 1, 1) must not count as above 1/3.
    return (totals > 0) & (shares >= fraction * top * (1 - _TOLERANCE)) & (shares > uniform * (1 + _TOLERANCE))


def alignment(bias: np.ndarray, labels: np.ndarray, favoured: np.ndarray) -> np.ndarray:
    """Per sample: ALIGNED, CONFLICTING or NEUTRAL (a bias value beyond the table never occurred in train)."""
    bias, labels = np.asarray(bias, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    out = np.full(len(bias), NEUTRAL, dtype=np.int64)
    known = bias < len(favoured)
    rows = favoured[bias[known]]
    has_any = rows.any(axis=1)
    in_set = rows[np.arange(len(rows)), labels[known]] if len(rows) else np.zeros(0, dtype=bool)
    out[np.flatnonzero(known)[has_any]] = np.where(in_set[has_any], ALIGNED, CONFLICTING)
    return out


def aligned_share(prior_counts: np.ndarray, favoured: np.ndarray) -> float | None:
    """Share of training samples whose label is among the classes their bias value favours, among the samples whose bias
    value favours some class (neutral ones can neither follow nor defy the shortcut)."""
    counts = np.asarray(prior_counts)
    total = counts[favoured.any(axis=1)].sum()
    return float(counts[favoured].sum() / total) if total else None


def follows(prediction: np.ndarray, labels: np.ndarray, donor_favoured: np.ndarray) -> np.ndarray:
    """The carrier test's bias-follow: the prediction is a class the donor's bias value favours and not the sample's
    own label (predicting the right label is never following the bias). donor_favoured: [B, C] rows of F."""
    prediction = np.asarray(prediction, dtype=np.int64)
    if not len(prediction):
        return np.zeros(0, dtype=bool)
    return donor_favoured[np.arange(len(prediction)), prediction] & (prediction != labels)


def favoured_section(
    prior_counts: np.ndarray,
    favoured: np.ndarray,
    *,
    fraction: float,
    class_names: Sequence[str],
    bias_names: Sequence[str] | None,
) -> dict[str, Any]:
    """F(k) per bias value with the shares behind it, the rule, and the bias values whose single-argmax reading (audits
    before the rule) was close to a tie."""
    counts = np.asarray(prior_counts, dtype=np.float64)
    values: list[dict[str, Any]] = []  # the section's JSON rows
    near_ties: list[str] = []
    for k, row in enumerate(counts):
        total = row.sum()
        if not total:
            continue
        shares = row / total
        order = np.argsort(-shares, kind="stable")
        name = str(bias_names[k]) if bias_names and k < len(bias_names) else str(k)
        classes = [int(y) for y in order if favoured[k, y]]
        values.append(
            {
                "bias": k,
                "bias_name": name,
                "n": int(total),
                "classes": classes,
                "class_names": [str(class_names[y]) if y < len(class_names) else str(y) for y in classes],
                "shares": [float(shares[y]) for y in classes],
            }
        )
        if len(order) > 1 and shares[order[0]] > 0 and shares[order[1]] >= NEAR_TIE_RATIO * shares[order[0]] * (1 - _TOLERANCE):
            near_ties.append(name)
    note = None
    if near_ties:
        shown = ", ".join(near_ties[:10]) + (f" and {len(near_ties) - 10} more" if len(near_ties) > 10 else "")
        note = (
            f"Bias value(s) {shown} have their two most frequent classes within {round(100 * (1 - NEAR_TIE_RATIO))}% "
            "of each other in train; audits before the favoured-class rule read only the most frequent one, "
            "so their aligned/conflicting figures for these values are unreliable."
        )
    return {
        "rule": f"classes with a training share >= {fraction:g} x the largest and > 1/C",
        "fraction": fraction,
        "values": values,
        "several": sum(1 for v in values if len(v["classes"]) > 1),
        "none": sum(1 for v in values if not v["classes"]),
        "near_ties": near_ties,
        "note": note,
    }
