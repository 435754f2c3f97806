"""Checks of what "missing" means (issue 9): a mute that sends (nearly) every sample to one class, or whose
input lies far outside the data, measures the model's reaction to an odd input, not its reliance on the
modality. A black image under ImageNet normalisation is the classic case: every pixel sits about two
standard deviations below the mean at once, and the dominant modality is then named for the wrong reason.

Decisions (documented thresholds):
- degenerate: at least DEGENERATE_SHARE of the muted predictions are one class, and that class's share of
  the labels is at least DEGENERATE_EXCESS lower (a split that really is 90% one class is not degenerate);
- far outside: the muted input's branch embedding lies at a root-mean-square z-score of at least
  FAR_OUTSIDE_Z per dimension from the Full embeddings' mean (the data's own RMS z is 1 by construction).
  The moments stream exactly (sums and sums of squares), so no sample is kept.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from biasaudit._core.exact_sums import ExactSum
from biasaudit.data.impairments import IMPAIRMENTS

DEGENERATE_SHARE = 0.9
DEGENERATE_EXCESS = 0.25
FAR_OUTSIDE_Z = 3.0


class Moments:
    """Per-dimension sums and sums of squares of embeddings, exact (biasaudit/_core/exact_sums.py) so that shards merge."""

    def __init__(self) -> None:
        self.n = 0
        self.inconsistent = False
        # Created together by the first embedding: both None or both set.
        self._sum: ExactSum | None = None
        self._squares: ExactSum | None = None

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
        if self._sum is not None and values.shape[1] != len(self._sum.totals):
            self.inconsistent = True  # a branch whose width changes between batches: no distance is reported
            return
        with np.errstate(over="ignore", invalid="ignore"):
            sums, squares = values.sum(axis=0), (values * values).sum(axis=0)
        if not (np.all(np.isfinite(sums)) and np.all(np.isfinite(squares))):
            self.inconsistent = True  # a non-finite (or overflowing) embedding has no distance either
            return
        if self._sum is None or self._squares is None:
            self._sum, self._squares = ExactSum(values.shape[1]), ExactSum(values.shape[1])
        self.n += len(values)
        self._sum.add(sums)
        self._squares.add(squares)

    def merge(self, other: Moments) -> None:
        if other._sum is None or other._squares is None:
            self.inconsistent |= other.inconsistent
            return
        if self._sum is None or self._squares is None:
            self._sum, self._squares = ExactSum(len(other._sum.totals)), ExactSum(len(other._sum.totals))
        if len(self._sum.totals) != len(other._sum.totals):
            self.inconsistent = True
            return
        self.inconsistent |= other.inconsistent
        self.n += other.n
        self._sum.merge(other._sum)
        self._squares.merge(other._squares)

    @property
    def sum(self) -> np.ndarray | None:
        return self._sum.value() if self._sum is not None else None

    @property
    def squares(self) -> np.ndarray | None:
        return self._squares.value() if self._squares is not None else None


def rms_z(data: Moments, muted: Moments) -> float | None:
    """sqrt(mean_d E_muted[(e_d - mu_d)^2] / var_d) over dimensions where the data varies."""
    data_sum, muted_sum, data_squares, muted_squares = data.sum, muted.sum, data.squares, muted.squares
    if (
        data.inconsistent
        or muted.inconsistent
        or not data.n
        or not muted.n
        or data_sum is None
        or muted_sum is None
        or data_squares is None
        or muted_squares is None
        or data_sum.shape != muted_sum.shape
    ):
        return None
    mu = data_sum / data.n
    var = data_squares / data.n - mu * mu
    varies = var > 1e-12 * max(1.0, float(np.max(np.abs(mu))) ** 2)
    if not varies.any():
        return None
    second = muted_squares / muted.n - 2 * mu * muted_sum / muted.n + mu * mu
    return float(np.sqrt(np.mean(np.maximum(second[varies], 0.0) / var[varies])))


def alternative_mutes(kind: str, current: str) -> list[str]:
    return sorted(n for n, imp in IMPAIRMENTS.get(kind, {}).items() if imp.mutes and n != current)


def mute_findings(
    rows: Sequence[Mapping[str, Any]],
    *,
    label_counts: np.ndarray,
    class_names: Sequence[str],
    kinds: Mapping[str, str],
    distances: Mapping[str, float | None],
) -> list[dict[str, Any]]:
    """rows: the missing-condition rows (name, modality, impairment, confusion column sums as `predicted`)."""
    findings = []
    n = int(label_counts.sum())
    for row in rows:
        modality, impairment = row["modality"], row["impairment"]
        alternatives = alternative_mutes(kinds[modality], impairment)
        hint = (
            f"; try --mute {modality}={alternatives[0]} or compare both with --mute-compare"
            if alternatives
            else "; check what the model receives for a missing input"
        )
        predicted = np.asarray(row["predicted"])
        top = int(np.argmax(predicted))
        share = float(predicted[top] / n) if n else 0.0
        if share >= DEGENERATE_SHARE and share - label_counts[top] / n >= DEGENERATE_EXCESS:
            findings.append(
                {
                    "condition": row["name"],
                    "modality": modality,
                    "kind": "degenerate",
                    "top_class": top,
                    "top_class_name": class_names[top],
                    "share": share,
                    "distance": distances.get(modality),
                    "message": f"Muting {modality} ({impairment}) sends {100 * share:.0f}% of the samples to class "
                    f"{class_names[top]}, which is {100 * label_counts[top] / n:.0f}% of the labels: the flip rate then "
                    f"measures the reaction to that input more than reliance on {modality}{hint}.",
                }
            )
        distance = distances.get(modality)
        if distance is not None and distance >= FAR_OUTSIDE_Z:
            findings.append(
                {
                    "condition": row["name"],
                    "modality": modality,
                    "kind": "far_outside",
                    "top_class": top,
                    "top_class_name": class_names[top],
                    "share": share,
                    "distance": distance,
                    "message": f"The muted {modality} input ({impairment}) lies far outside the data: its branch embedding "
                    f"is {distance:.1f} standard deviations from the data's mean per dimension (the data's own "
                    f"spread is 1){hint}.",
                }
            )
    return findings
