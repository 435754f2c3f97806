"""Calibration per condition (methods.md section 9): expected calibration error from streaming bin counts,
reliability diagrams, and the confidence-rise rate.

A model that grows *more* confident when a modality is muted is not using that modality sensibly: its
confidence does not reflect the evidence it was given. The rise is counted against the same sample's Full
confidence, so it needs no labels.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from biasaudit.exact_sums import ExactSum

BINS = 15
# Confidences within this of Full's count as equal: softmax in float32 is not exact to the last bit.
RISE_TOLERANCE = 1e-6


class CalibrationAccumulator:
    def __init__(self, condition_names: Sequence[str], *, bins: int = BINS, full: str = "full") -> None:
        self.condition_names = tuple(condition_names)
        self.bins, self.full = int(bins), full
        self.count = {c: np.zeros(bins, dtype=np.int64) for c in self.condition_names}
        self.correct = {c: np.zeros(bins, dtype=np.int64) for c in self.condition_names}
        # Exact sums (biasaudit/exact_sums.py): a sharded scan adds its batches in another order and must agree to the bit.
        self._confidence = {c: ExactSum(bins) for c in self.condition_names}
        self.rises = {c: 0 for c in self.condition_names}
        self.n = 0

    def update(self, confidences: Mapping[str, np.ndarray], correct: Mapping[str, np.ndarray]) -> None:
        """confidences: max softmax per sample and condition; correct: prediction == label."""
        full = confidences[self.full]
        self.n += len(full)
        for c in self.condition_names:
            conf = np.asarray(confidences[c], dtype=np.float64)
            # Equal-width bins on [0, 1]; a confidence of exactly 1 belongs to the last bin.
            which = np.minimum((conf * self.bins).astype(np.int64), self.bins - 1)
            self.count[c] += np.bincount(which, minlength=self.bins)
            self.correct[c] += np.bincount(which[correct[c]], minlength=self.bins)
            self._confidence[c].add(np.bincount(which, weights=conf, minlength=self.bins))
            self.rises[c] += int(np.count_nonzero(conf > full + RISE_TOLERANCE))

    def merge(self, other: CalibrationAccumulator) -> None:
        self.n += other.n
        for c in self.condition_names:
            self.count[c] += other.count[c]
            self.correct[c] += other.correct[c]
            self._confidence[c].merge(other._confidence[c])
            self.rises[c] += other.rises[c]

    @property
    def confidence(self) -> dict[str, np.ndarray]:
        """Per condition, the sum of the confidences that fell in each bin."""
        return {c: total.value() for c, total in self._confidence.items()}

    def ece(self, condition: str) -> float:
        """sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_b - sum conf_b| / N (Naeini et al. 2015)."""
        return float(np.abs(self.correct[condition] - self._confidence[condition].value()).sum() / self.n)

    def section(self) -> dict[str, Any]:
        edges = np.linspace(0.0, 1.0, self.bins + 1)
        conditions = {}
        for c in self.condition_names:
            count, confidence = self.count[c], self._confidence[c].value()
            reliability = [{"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(count[b]),
                            "confidence": float(confidence[b] / count[b]) if count[b] else None,
                            "accuracy": float(100.0 * self.correct[c][b] / count[b]) if count[b] else None}
                           for b in range(self.bins)]
            conditions[c] = {"ece": self.ece(c), "confidence_rise_rate": None if c == self.full else self.rises[c] / self.n,
                             "reliability": reliability}
        return {"available": True, "bins": self.bins, "conditions": conditions}
