"""Count-based accuracy of every condition of a scan, with a paired bootstrap (methods.md section 2).

Memory is bounded whatever the dataset size: per condition a CxC confusion matrix, a flip count
against `full`, and per bootstrap replicate the weighted number of correct predictions.

Why a Poisson bootstrap: the classic (multinomial) bootstrap resamples n indices with replacement,
which needs n known in advance and all predictions kept in memory. Giving every sample an
independent Poisson(1) weight per replicate instead approximates the multinomial counts (a
Multinomial(n, 1/n) count per sample tends to Poisson(1) as n grows; Hanley & MacGibbon 2006,
Chamandy et al. 2012), can be accumulated batch by batch in O(replicates) memory, and merges across
shards by addition. The weights come from a generator seeded by (seed, tag, sample index), so they do
not depend on batch size or order, and every condition reuses the same weights for a sample: the
bootstrap is *paired*, so differences between conditions (the Gap) get their own tight intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from biasaudit.errors import DataError, InputError
from biasaudit.impairments import stream_id

FULL = "full"
CI_PERCENTILES = (2.5, 97.5)
_BOOTSTRAP_TAG = stream_id("bootstrap-weights")


def bootstrap_weights(indices: np.ndarray, *, replicates: int, seed: int) -> np.ndarray:
    """Poisson(1) weights [B, replicates] (int64), one fixed row per global sample index."""
    rows = [np.random.default_rng([seed, _BOOTSTRAP_TAG, int(i)]).poisson(1.0, replicates) for i in indices]
    return np.stack(rows).astype(np.int64) if rows else np.zeros((0, replicates), dtype=np.int64)


def percentile_interval(values: np.ndarray) -> tuple[float, float] | None:
    """The 95% percentile interval of bootstrap replicates; None when no replicate is finite."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    lo, hi = np.percentile(finite, CI_PERCENTILES)
    return float(lo), float(hi)


@dataclass(frozen=True)
class ConditionScores:
    accuracy: float  # percent
    accuracy_ci: tuple[float, float] | None  # 95% percentile interval of the bootstrap, percent
    macro_f1: float  # percent, over the classes present in the labels or the predictions
    per_class_accuracy: list[float | None]  # percent (recall of each class); None for absent classes
    flip_rate: float  # fraction 0-1 of samples whose prediction differs from `full`
    n: int
    replicate_accuracy: np.ndarray  # [replicates] percent; NaN for a replicate that drew no sample

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "accuracy_ci": list(self.accuracy_ci) if self.accuracy_ci is not None else None,
            "macro_f1": self.macro_f1,
            "per_class_accuracy": list(self.per_class_accuracy),
            "flip_rate": self.flip_rate,
            "n": self.n,
        }


def macro_f1_from_confusion(confusion: np.ndarray) -> float:
    """Macro F1 in percent, as sklearn's f1_score(average="macro") over the classes seen in y or y_hat.

    F1_c = 2 TP / (2 TP + FP + FN) = 2 TP / (row_c + col_c); a class absent from both the labels and
    the predictions is left out (sklearn's default label set), one absent only from the predictions
    scores 0.
    """
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1) + confusion.sum(axis=0)
    seen = support > 0
    if not seen.any():
        return float("nan")
    return float(100.0 * np.mean(2.0 * tp[seen] / support[seen]))


def _as_int_vector(values: np.ndarray, *, what: str, length: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise DataError(f"{what} has shape {array.shape} and dtype {array.dtype}; expected a 1-D integer array.")
    if length is not None and array.shape[0] != length:
        raise DataError(f"{what} has {array.shape[0]} rows; expected {length}, one per sample of the batch.")
    return array.astype(np.int64)


class ConditionAccumulator:
    """Streams (predictions per condition, labels) batch by batch; `result()` gives the scores."""

    def __init__(self, condition_names: Sequence[str], *, num_classes: int, replicates: int = 1000,
                 seed: int = 0) -> None:
        names = list(condition_names)
        if FULL not in names:
            raise InputError(f"Conditions {names} lack {FULL!r}; flip rates are measured against it.")
        if len(set(names)) != len(names):
            raise InputError(f"Conditions {names} contain a duplicate name; expected unique names.")
        if num_classes < 1:
            raise InputError(f"num_classes is {num_classes}; expected at least 1.")
        if replicates < 1:
            raise InputError(f"replicates is {replicates}; expected at least 1 bootstrap replicate.")
        if seed < 0:
            raise InputError(f"seed is {seed}; expected a non-negative integer.")
        self.condition_names = tuple(names)
        self.num_classes = int(num_classes)
        self.replicates = int(replicates)
        self.seed = int(seed)
        self.n = 0
        self.confusion = {c: np.zeros((num_classes, num_classes), dtype=np.int64) for c in names}
        self.flips = {c: 0 for c in names}
        # Poisson weights are integers, so integer sums are exact and independent of batch order.
        self.weighted_total = np.zeros(replicates, dtype=np.int64)
        self.weighted_correct = {c: np.zeros(replicates, dtype=np.int64) for c in names}

    def update(self, predictions: Mapping[str, np.ndarray], labels: np.ndarray, *, indices: np.ndarray) -> None:
        """Add one batch. `indices` are the global sample indices: each sample must appear once per scan."""
        missing = [c for c in self.condition_names if c not in predictions]
        if missing:
            raise DataError(f"Predictions lack conditions {missing}; expected one array for each of "
                            f"{list(self.condition_names)}.")
        y = _as_int_vector(labels, what="labels")
        batch = y.shape[0]
        idx = _as_int_vector(indices, what="indices", length=batch)
        preds = {c: _as_int_vector(predictions[c], what=f"predictions[{c!r}]", length=batch)
                 for c in self.condition_names}
        for what, values in [("labels", y), *((f"predictions[{c!r}]", p) for c, p in preds.items())]:
            if batch and (values.min() < 0 or values.max() >= self.num_classes):
                raise DataError(f"{what} holds values from {values.min()} to {values.max()}; "
                                f"expected class ids in [0, {self.num_classes - 1}].")
        if batch and idx.min() < 0:
            raise DataError(f"indices hold {idx.min()}; expected non-negative global sample indices.")
        weights = bootstrap_weights(idx, replicates=self.replicates, seed=self.seed)
        self.n += batch
        self.weighted_total += weights.sum(axis=0)
        full = preds[FULL]
        size = self.num_classes * self.num_classes
        for c, p in preds.items():
            cells = np.bincount(y * self.num_classes + p, minlength=size)
            self.confusion[c] += cells.reshape(self.num_classes, self.num_classes)
            self.flips[c] += int(np.count_nonzero(p != full))
            self.weighted_correct[c] += (p == y).astype(np.int64) @ weights

    def merge(self, other: ConditionAccumulator) -> None:
        """Add the counts of another shard of the same scan (disjoint sample indices) into this one."""
        mine = (self.condition_names, self.num_classes, self.replicates, self.seed)
        theirs = (other.condition_names, other.num_classes, other.replicates, other.seed)
        if mine != theirs:
            raise InputError(f"Cannot merge an accumulator of (conditions, classes, replicates, seed) {theirs} "
                             f"into one of {mine}; expected identical settings.")
        self.n += other.n
        self.weighted_total += other.weighted_total
        for c in self.condition_names:
            self.confusion[c] += other.confusion[c]
            self.flips[c] += other.flips[c]
            self.weighted_correct[c] += other.weighted_correct[c]

    def result(self) -> dict[str, ConditionScores]:
        """Scores per condition, in the order the conditions were given."""
        if self.n == 0:
            raise DataError("The scan saw no samples; expected at least one batch with at least one sample.")
        total = self.weighted_total.astype(np.float64)
        out = {}
        for c in self.condition_names:
            confusion = self.confusion[c]
            rows = confusion.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                replicate_accuracy = 100.0 * self.weighted_correct[c] / total  # NaN where a replicate drew nothing
                recall = 100.0 * np.diag(confusion) / rows
            out[c] = ConditionScores(
                accuracy=float(100.0 * np.trace(confusion) / self.n),
                accuracy_ci=percentile_interval(replicate_accuracy),
                macro_f1=macro_f1_from_confusion(confusion),
                per_class_accuracy=[float(r) if present else None for r, present in zip(recall, rows > 0)],
                flip_rate=self.flips[c] / self.n,
                n=self.n,
                replicate_accuracy=replicate_accuracy,
            )
        return out
