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
The integer counts behind the replicates (`BootstrapCounts`) are what audit.json keeps: two audits of
the same samples with the same seed and replicate count drew the same weights, so their replicates
pair up one by one even when read back from files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from biasaudit.errors import DataError, InputError
from biasaudit._core.randomness import poisson1

FULL = "full"
CI_PERCENTILES = (2.5, 97.5)


def bootstrap_weights(indices: np.ndarray, *, replicates: int, seed: int) -> np.ndarray:
    """Poisson(1) weights [B, replicates] (int64), one fixed row per global sample index."""
    return poisson1(seed, "bootstrap-weights", np.asarray(indices, dtype=np.int64), replicates)


# Poisson(1) weights stop at 18 (randomness.py): below this many rows every product and partial sum of a batch's
# weighted count is an integer below 2**24, which float32 holds exactly.
FLOAT32_EXACT_ROWS = 2**24 // 20


def exact_weighted_sums(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """rows [K, B] (0/1) @ weights [B, R] (Poisson(1) draws) as int64, by one floating-point matrix product: every
    product and partial sum is an integer the float type holds exactly (float32 below FLOAT32_EXACT_ROWS rows, else
    float64), so the result is exact whatever order BLAS adds in, and it costs a fraction of numpy's integer matmul
    (which has no BLAS)."""
    dtype = np.float32 if rows.shape[-1] < FLOAT32_EXACT_ROWS else np.float64
    return (rows.astype(dtype) @ weights.astype(dtype)).astype(np.int64)


def percentile_interval(values: np.ndarray) -> tuple[float, float] | None:
    """The 95% percentile interval of bootstrap replicates; None when no replicate is finite."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    lo, hi = np.percentile(finite, CI_PERCENTILES)
    return float(lo), float(hi)


def replicate_accuracy(correct: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Percent per replicate from the weighted counts; NaN for a replicate that drew no sample."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100.0 * np.asarray(correct, dtype=np.int64) / np.asarray(total, dtype=np.int64).astype(np.float64)


def _count_list(values: Any, *, what: str, length: int) -> np.ndarray:
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != length:
        found = f"{len(values)} values" if isinstance(values, (list, tuple, np.ndarray)) else type(values).__name__
        raise DataError(f"{what} has {found}; expected a list of {length} integers, one per replicate.")
    # bool is an int subclass and 3.0 an exact float; neither is what the scan writes, so both mean a damaged file.
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and 0 <= v < 2**63 for v in values):
        raise DataError(f"{what} holds a value that is not a non-negative integer; expected weighted sample counts.")
    return np.asarray(values, dtype=np.int64)


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare the fields with numpy
class BootstrapCounts:
    """The integers behind every replicate accuracy of a scan: replicate r of condition c scored
    correct_weight[c][r] / total_weight[r]. The total is shared because every condition sees the same samples."""

    replicates: int
    seed: int
    total_weight: np.ndarray  # [replicates] int64: sum of the Poisson weights of all samples
    correct_weight: Mapping[str, np.ndarray]  # condition -> [replicates] int64: same sum over correct predictions
    # condition -> R for a random condition measured with R draws (biasaudit/scanning/draws.py): its correct weights are summed
    # over R draws picked with replacement, so its replicate scores correct / (R * total). Absent: one draw.
    draws: Mapping[str, int] = field(default_factory=dict)

    def accuracy(self, condition: str) -> np.ndarray:
        """[replicates] percent, bit-identical to the ConditionScores.replicate_accuracy of the scan."""
        return replicate_accuracy(self.correct_weight[condition], self.total_weight * self.draws.get(condition, 1))

    def to_dict(self) -> dict[str, Any]:
        out = {
            "replicates": self.replicates,
            "seed": self.seed,
            "total_weight": self.total_weight.tolist(),
            "correct_weight": {c: w.tolist() for c, w in self.correct_weight.items()},
        }
        if self.draws:  # single-draw audits keep the format they always had
            out["draws"] = dict(self.draws)
        return out

    @classmethod
    def from_dict(cls, section: Any, *, conditions: Sequence[str]) -> BootstrapCounts:
        """Checked counts of an audit's `bootstrap` section; `conditions` are the audit's condition names."""
        if not isinstance(section, Mapping):
            raise DataError(
                f"bootstrap is a {type(section).__name__}; "
                "expected an object with replicates, seed, total_weight and correct_weight."
            )
        for key in ("replicates", "seed"):
            value = section.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "replicates" else 0):
                raise DataError(
                    f"bootstrap.{key} is {value!r}; expected a {'positive' if key == 'replicates' else 'non-negative'} integer."
                )
        replicates = section["replicates"]
        total = _count_list(section.get("total_weight"), what="bootstrap.total_weight", length=replicates)
        correct = section.get("correct_weight")
        if not isinstance(correct, Mapping) or sorted(correct) != sorted(conditions):
            found = sorted(correct) if isinstance(correct, Mapping) else type(correct).__name__
            raise DataError(f"bootstrap.correct_weight covers {found}; expected one list per condition, {sorted(conditions)}.")
        counts = {c: _count_list(correct[c], what=f"bootstrap.correct_weight[{c!r}]", length=replicates) for c in conditions}
        draws = section.get("draws", {})
        if not isinstance(draws, Mapping) or not all(
            c in counts and isinstance(r, int) and not isinstance(r, bool) and r >= 1 for c, r in draws.items()
        ):
            raise DataError(
                f"bootstrap.draws is {draws!r}; expected an object of condition name -> number of draws (at least 1)."
            )
        for c, values in counts.items():
            if np.any(values > total * draws.get(c, 1)):
                raise DataError(
                    f"bootstrap.correct_weight[{c!r}] exceeds total_weight in some replicate; expected at most the total."
                )
        return cls(replicates=replicates, seed=section["seed"], total_weight=total, correct_weight=counts, draws=dict(draws))


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

    def __init__(self, condition_names: Sequence[str], *, num_classes: int, replicates: int = 1000, seed: int = 0) -> None:
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
        self.flips = dict.fromkeys(names, 0)
        # Poisson weights are integers, so integer sums are exact and independent of batch order.
        self.weighted_total = np.zeros(replicates, dtype=np.int64)
        self.weighted_correct = {c: np.zeros(replicates, dtype=np.int64) for c in names}
        self.draws: dict[str, int] = {}  # condition -> R once its draws are combined (combined_draws)

    def update(
        self, predictions: Mapping[str, np.ndarray], labels: np.ndarray, *, indices: np.ndarray, weights: np.ndarray | None = None
    ) -> None:
        """Add one batch. `indices` are the global sample indices: each sample must appear once per scan.
        `weights`: the batch's bootstrap_weights when the caller already drew them for other accumulators."""
        missing = [c for c in self.condition_names if c not in predictions]
        if missing:
            raise DataError(
                f"Predictions lack conditions {missing}; expected one array for each of {list(self.condition_names)}."
            )
        y = _as_int_vector(labels, what="labels")
        batch = y.shape[0]
        idx = _as_int_vector(indices, what="indices", length=batch)
        # [K, B], one row per condition: every count below is one vectorised call for all conditions at once.
        preds = np.stack([_as_int_vector(predictions[c], what=f"predictions[{c!r}]", length=batch) for c in self.condition_names])
        for what, values in (("labels", y), ("predictions", preds)):
            if batch and (values.min() < 0 or values.max() >= self.num_classes):
                if what == "predictions":
                    row = int(np.flatnonzero((preds < 0).any(axis=1) | (preds >= self.num_classes).any(axis=1))[0])
                    what, values = f"predictions[{self.condition_names[row]!r}]", preds[row]
                raise DataError(
                    f"{what} holds values from {values.min()} to {values.max()}; "
                    f"expected class ids in [0, {self.num_classes - 1}]."
                )
        if batch and idx.min() < 0:
            raise DataError(f"indices hold {idx.min()}; expected non-negative global sample indices.")
        if weights is None:
            weights = bootstrap_weights(idx, replicates=self.replicates, seed=self.seed)
        self.n += batch
        self.weighted_total += weights.sum(axis=0)
        classes, conditions = self.num_classes, len(self.condition_names)
        cells = np.bincount(
            (np.arange(conditions)[:, None] * classes * classes + y * classes + preds).ravel(),
            minlength=conditions * classes * classes,
        ).reshape(conditions, classes, classes)
        flips = np.count_nonzero(preds != preds[self.condition_names.index(FULL)], axis=1)
        correct = preds == y
        for c, table, flipped, sums in zip(
            self.condition_names, cells, flips.tolist(), exact_weighted_sums(correct, weights), strict=True
        ):
            self.confusion[c] += table
            self.flips[c] += flipped
            self.weighted_correct[c] += sums

    def merge(self, other: ConditionAccumulator) -> None:
        """Add the counts of another shard of the same scan (disjoint sample indices) into this one."""
        mine = (self.condition_names, self.num_classes, self.replicates, self.seed)
        theirs = (other.condition_names, other.num_classes, other.replicates, other.seed)
        if mine != theirs:
            raise InputError(
                f"Cannot merge an accumulator of (conditions, classes, replicates, seed) {theirs} "
                f"into one of {mine}; expected identical settings."
            )
        self.n += other.n
        self.weighted_total += other.weighted_total
        for c in self.condition_names:
            self.confusion[c] += other.confusion[c]
            self.flips[c] += other.flips[c]
            self.weighted_correct[c] += other.weighted_correct[c]

    def bootstrap_counts(self) -> BootstrapCounts:
        """A copy of the replicate counts, in the order the conditions were given."""
        return BootstrapCounts(
            replicates=self.replicates,
            seed=self.seed,
            total_weight=self.weighted_total.copy(),
            correct_weight={c: self.weighted_correct[c].copy() for c in self.condition_names},
            draws=dict(self.draws),
        )

    def combined_draws(self, groups: Mapping[str, Sequence[str]], multiplicities: np.ndarray) -> ConditionAccumulator:
        """The same counts with each group of draws (base name -> names of its R draws) summed into its base condition:
        confusion and flips over all draws (their means are the figures), replicate counts weighted by how often each
        draw is picked in that replicate (biasaudit/scanning/draws.py)."""
        members = {name for names in groups.values() for name in names[1:]}
        out = ConditionAccumulator(
            [c for c in self.condition_names if c not in members],
            num_classes=self.num_classes,
            replicates=self.replicates,
            seed=self.seed,
        )
        out.n, out.weighted_total = self.n, self.weighted_total.copy()
        for c in out.condition_names:
            names = groups.get(c, [c])
            out.confusion[c] = np.stack([self.confusion[d] for d in names]).sum(axis=0)
            out.flips[c] = sum(self.flips[d] for d in names)
            out.weighted_correct[c] = (
                np.stack([multiplicities[:, i] * self.weighted_correct[d] for i, d in enumerate(names)]).sum(axis=0)
                if c in groups
                else self.weighted_correct[c].copy()
            )
            if c in groups:
                out.draws[c] = len(names)
        return out

    def result(self) -> dict[str, ConditionScores]:
        """Scores per condition, in the order the conditions were given."""
        if self.n == 0:
            raise DataError("The scan saw no samples; expected at least one batch with at least one sample.")
        counts = self.bootstrap_counts()
        out = {}
        for c in self.condition_names:
            confusion = self.confusion[c]
            rows = confusion.sum(axis=1)
            replicates = counts.accuracy(c)
            evaluated = self.n * self.draws.get(c, 1)  # samples x draws: the figures of R draws are their means
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = 100.0 * np.diag(confusion) / rows
            out[c] = ConditionScores(
                accuracy=float(100.0 * np.trace(confusion) / evaluated),
                accuracy_ci=percentile_interval(replicates),
                macro_f1=macro_f1_from_confusion(confusion),
                per_class_accuracy=[float(r) if present else None for r, present in zip(recall, rows > 0, strict=True)],
                flip_rate=self.flips[c] / evaluated,
                n=self.n,
                replicate_accuracy=replicates,
            )
        return out
