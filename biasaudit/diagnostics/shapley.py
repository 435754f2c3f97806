"""Per-sample modality value: exact Shapley values of correctness (methods.md section 9; Wei et al. 2024).

v(S) = 1 when the prediction with only the modalities in S intact (the others muted) is right. For two
modalities phi_a = 1/2 [(v(ab) - v(b)) + (v(a) - v(empty))]; in general the exact Shapley sum over all
2^M subsets, which is cheap for M <= 4. Values are multiples of 1/M!, so they are accumulated as integers
(M! phi), which keeps the means exact, streaming and mergeable. A modality the model ignores has
v(S + m) = v(S) for every S and so phi = 0 for every sample.
"""

from __future__ import annotations

import itertools
import math
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from biasaudit.diagnostics.accuracy import percentile_interval

MAX_MODALITIES = 4


def subsets(modalities: Sequence[str]) -> list[frozenset[str]]:
    return [frozenset(c) for r in range(len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def scaled_shapley(correct: Mapping[frozenset[str], np.ndarray], modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """M! * phi_m per sample (integers) from v(S) per subset."""
    m_count = len(modalities)
    out = {}
    for m in modalities:
        others = [o for o in modalities if o != m]
        total = np.zeros(len(next(iter(correct.values()))), dtype=np.int64)
        for s in subsets(others):
            weight = math.factorial(len(s)) * math.factorial(m_count - len(s) - 1)
            total += weight * (correct[s | {m}].astype(np.int64) - correct[s].astype(np.int64))
        out[m] = total
    return out


class ShapleyAccumulator:
    def __init__(self, modalities: Sequence[str], *, num_classes: int, replicates: int) -> None:
        self.modalities = tuple(modalities)
        self.scale = math.factorial(len(self.modalities))
        self.num_classes = num_classes
        self.values: dict[str, dict[int, int]] = {m: {} for m in self.modalities}  # scaled value -> samples
        self.class_sum = {m: np.zeros(num_classes, dtype=np.int64) for m in self.modalities}
        self.class_count = np.zeros(num_classes, dtype=np.int64)
        self.w_sum = {m: np.zeros(replicates, dtype=np.int64) for m in self.modalities}
        self.w_total = np.zeros(replicates, dtype=np.int64)
        self.contingency: dict[frozenset[str], int] = {}

    def update(self, correct: Mapping[frozenset[str], np.ndarray], labels: np.ndarray, weights: np.ndarray) -> None:
        scaled = scaled_shapley(correct, self.modalities)
        self.class_count += np.bincount(labels, minlength=self.num_classes)
        self.w_total += weights.sum(axis=0)
        for m, values in scaled.items():
            for value, n in zip(*np.unique(values, return_counts=True), strict=True):
                self.values[m][int(value)] = self.values[m].get(int(value), 0) + int(n)
            self.class_sum[m] += np.bincount(labels, weights=values, minlength=self.num_classes).astype(np.int64)
            self.w_sum[m] += values @ weights
        alone = np.stack([correct[frozenset([m])] for m in self.modalities], axis=1)
        for row, n in zip(*np.unique(alone, axis=0, return_counts=True), strict=True):
            key = frozenset(m for m, ok in zip(self.modalities, row, strict=True) if ok)
            self.contingency[key] = self.contingency.get(key, 0) + int(n)

    def merge(self, other: ShapleyAccumulator) -> None:
        self.class_count += other.class_count
        self.w_total += other.w_total
        for m in self.modalities:
            for value, n in other.values[m].items():
                self.values[m][value] = self.values[m].get(value, 0) + n
            self.class_sum[m] += other.class_sum[m]
            self.w_sum[m] += other.w_sum[m]
        for key, n in other.contingency.items():
            self.contingency[key] = self.contingency.get(key, 0) + n

    def section(self) -> dict[str, Any]:
        modalities = {}
        for m in self.modalities:
            n = sum(self.values[m].values())
            with np.errstate(invalid="ignore", divide="ignore"):
                replicates = self.w_sum[m] / (self.scale * self.w_total.astype(np.float64))
                per_class = self.class_sum[m] / (self.scale * self.class_count.astype(np.float64))
            modalities[m] = {
                "mean": sum(v * c for v, c in self.values[m].items()) / (self.scale * n) if n else None,
                "mean_ci": percentile_interval(replicates),
                "distribution": {f"{v / self.scale:g}": c for v, c in sorted(self.values[m].items())},
                "per_class": [None if self.class_count[i] == 0 else float(per_class[i]) for i in range(self.num_classes)],
            }
        return {"available": True, "note": None, "modalities": modalities, "contingency": self._contingency()}

    def _contingency(self) -> dict[str, int]:
        if len(self.modalities) == 2:
            a, b = self.modalities
            names = {frozenset([a, b]): "both", frozenset([a]): f"only:{a}", frozenset([b]): f"only:{b}", frozenset(): "neither"}
            return {names[k]: self.contingency.get(k, 0) for k in names}
        keys = sorted(subsets(self.modalities), key=lambda k: (-len(k), sorted(k)))  # every cell, zeros included
        return {"+".join(m for m in self.modalities if m in k) or "none": self.contingency.get(k, 0) for k in keys}
