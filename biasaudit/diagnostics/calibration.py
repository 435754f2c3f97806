"""Calibration per condition (methods.md section 9): expected calibration error from streaming bin counts,
reliability diagrams, and the confidence-rise rate.

A model that grows *more* confident when a modality is muted is not using that modality sensibly: its
confidence does not reflect the evidence it was given. The rise is counted against the same sample's Full
confidence, so it needs no labels.
"""

from __future__ import annotations

from typing import Any, ClassVar
from collections.abc import Mapping, Sequence

import numpy as np

from biasaudit._core.exact_sums import ExactSum
from biasaudit.diagnostics.protocol import BatchOutcome, FinishContext, PassFacts, Section, own_draws

BINS = 15
# Confidences within this of Full's count as equal: softmax in float32 is not exact to the last bit.
RISE_TOLERANCE = 1e-6


class CalibrationAccumulator:
    def __init__(self, condition_names: Sequence[str], *, bins: int = BINS, full: str = "full") -> None:
        self.condition_names = tuple(condition_names)
        self.bins, self.full = int(bins), full
        conditions = len(self.condition_names)
        # [K, bins] per condition and bin; every batch adds to all conditions with one call each.
        self.count = np.zeros((conditions, bins), dtype=np.int64)
        self.correct = np.zeros((conditions, bins), dtype=np.int64)
        # Exact sums (biasaudit/_core/exact_sums.py): a sharded scan adds its batches in another order and must agree to the bit.
        self._confidence = ExactSum(conditions * bins)
        self.rises = np.zeros(conditions, dtype=np.int64)
        self.n = 0
        self.draws: dict[str, int] = {}  # condition -> R once its draws are combined: bins hold R x n confidences

    def update(self, confidences: Mapping[str, np.ndarray], correct: Mapping[str, np.ndarray]) -> None:
        """confidences: max softmax per sample and condition; correct: prediction == label."""
        conf = np.stack([np.asarray(confidences[c], dtype=np.float64) for c in self.condition_names])  # [K, B]
        right = np.stack([np.asarray(correct[c], dtype=bool) for c in self.condition_names])
        self.n += conf.shape[1]
        # Equal-width bins on [0, 1]; a confidence of exactly 1 belongs to the last bin. Bin b of condition k is cell
        # k * bins + b, so one bincount fills every condition; each cell still adds its batch's values in sample order.
        cell = np.minimum((conf * self.bins).astype(np.int64), self.bins - 1) + np.arange(len(conf))[:, None] * self.bins
        size = self.count.size
        self.count += np.bincount(cell.ravel(), minlength=size).reshape(self.count.shape)
        self.correct += np.bincount(cell[right], minlength=size).reshape(self.count.shape)
        self._confidence.add(np.bincount(cell.ravel(), weights=conf.ravel(), minlength=size))
        self.rises += np.count_nonzero(conf > conf[self.condition_names.index(self.full)] + RISE_TOLERANCE, axis=1)

    def merge(self, other: CalibrationAccumulator) -> None:
        self.n += other.n
        self.count += other.count
        self.correct += other.correct
        self._confidence.merge(other._confidence)
        self.rises += other.rises

    def combined_draws(self, groups: Mapping[str, Sequence[str]]) -> CalibrationAccumulator:
        """Each group of draws (base name -> names of its R draws) summed into its base condition
        (biasaudit/scanning/draws.py)."""
        members = {name for names in groups.values() for name in names[1:]}
        out = CalibrationAccumulator([c for c in self.condition_names if c not in members], bins=self.bins, full=self.full)
        out.n = self.n
        totals = []
        for k, c in enumerate(out.condition_names):
            rows = [self.condition_names.index(d) for d in groups.get(c, [c])]
            out.count[k], out.correct[k], out.rises[k] = (
                self.count[rows].sum(axis=0),
                self.correct[rows].sum(axis=0),
                self.rises[rows].sum(),
            )
            totals += [sum(self._confidence.totals[r * self.bins + b] for r in rows) for b in range(self.bins)]
            if c in groups:
                out.draws[c] = len(rows)
        out._confidence.totals = totals
        return out

    def _sums(self) -> np.ndarray:
        """[K, bins]: the confidences summed per condition and bin."""
        return self._confidence.value().reshape(self.count.shape)

    def ece(self, condition: str) -> float:
        """sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_b - sum conf_b| / N (Naeini et al. 2015)."""
        k = self.condition_names.index(condition)
        return float(np.abs(self.correct[k] - self._sums()[k]).sum() / (self.n * self.draws.get(condition, 1)))

    def section(self) -> dict[str, Any]:
        edges = np.linspace(0.0, 1.0, self.bins + 1)
        conditions = {}
        for k, (c, confidence) in enumerate(zip(self.condition_names, self._sums(), strict=True)):
            count = self.count[k]
            reliability = [
                {
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "count": int(count[b]),
                    "confidence": float(confidence[b] / count[b]) if count[b] else None,
                    "accuracy": float(100.0 * self.correct[k][b] / count[b]) if count[b] else None,
                }
                for b in range(self.bins)
            ]
            conditions[c] = {
                "ece": self.ece(c),
                "confidence_rise_rate": None if c == self.full else int(self.rises[k]) / (self.n * self.draws.get(c, 1)),
                "reliability": reliability,
            }
        return {"available": True, "bins": self.bins, "conditions": conditions}


class CalibrationDiagnostic:
    """Calibration as a scan diagnostic (biasaudit/diagnostics/protocol.py): every condition of the pass."""

    part_classes: ClassVar[tuple[type, ...]] = (CalibrationAccumulator, ExactSum)

    def __init__(self, facts: PassFacts) -> None:
        self.accumulator = CalibrationAccumulator(facts.conditions)

    def update(self, outcome: BatchOutcome) -> None:
        correct = {c: p == outcome.labels for c, p in outcome.predictions.items()}
        self.accumulator.update(outcome.confidences, correct)

    def merge(self, other: CalibrationDiagnostic) -> None:
        self.accumulator.merge(other.accumulator)

    def compute(self, context: FinishContext) -> Section:
        draws = own_draws(context, self.accumulator.condition_names)
        return Section((self.accumulator.combined_draws(draws) if draws else self.accumulator).section())

    def reset(self) -> None:
        a = self.accumulator
        self.accumulator = CalibrationAccumulator(a.condition_names, bins=a.bins, full=a.full)
