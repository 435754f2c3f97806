"""Accuracy per (label, bias value) group, worst-group and bias-balanced accuracy (methods.md section 9): the counts
(GroupAccumulator) and the scores they give; the audit's section is written from them in groups_section.py.

Worst-group accuracy is the standard figure of the spurious-correlation literature (Sagawa et al. 2020):
a model that copies a shortcut is right on the groups where the shortcut agrees with the label and wrong
on the rare ones where it does not, which an average hides. Counts only: per condition a [groups]
correct count and per bootstrap replicate a [groups, replicates] weighted count, so the figures stream,
merge by addition and get the same paired intervals as every other accuracy of the scan.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import beta

from biasaudit.diagnostics.favoured import ALIGNMENT_NAMES, CONFLICTING, alignment as sample_alignment
from biasaudit.diagnostics.accuracy import FLOAT32_EXACT_ROWS, percentile_interval

# Grouping choice. (label, bias value) is the definition; but C x K groups need C x K x min_group samples. A
# split such as the demo's ood (10 digits x 10 colours in 323 samples, ~3 per group) has no group to count,
# and an in-distribution split has its few bias-conflicting samples in groups too small to count, so its
# worst group is a bias-aligned one and cannot see the bias. "auto" then falls back to (label, bias-aligned,
# conflicting or neutral), at most 3C groups, and says so. It decides on the split's labels and bias values only,
# so two audits of the same samples always group alike.
GROUPINGS = ("auto", "bias", "alignment")
# auto keeps (label, bias value) when counted groups hold this share of all and of the conflicting samples
AUTO_COVERAGE = 0.5


def choose_grouping(fine: GroupAccumulator, *, min_group: int, grouping: str, favoured: np.ndarray) -> str:
    if grouping != "auto":
        return grouping
    counted = fine.count >= min_group
    is_conflicting = fine.group_alignment(favoured) == CONFLICTING
    shares = [
        fine.count[counted & within].sum() / fine.count[within].sum()
        for within in (np.ones_like(counted), is_conflicting)
        if fine.count[within].sum()
    ]
    return "bias" if shares and min(shares) >= AUTO_COVERAGE else "alignment"


def clopper_pearson(correct: int, n: int, *, level: float = 0.95) -> tuple[float, float] | None:
    """Exact binomial interval of an accuracy, in percent. A percentile bootstrap of 0/11 has zero width and reads as
    certainty; this one says 0 of 11 is compatible with up to 28%."""
    if n <= 0:
        return None
    tail = (1.0 - level) / 2.0
    low = 0.0 if correct == 0 else float(beta.ppf(tail, correct, n - correct + 1))
    high = 1.0 if correct == n else float(beta.ppf(1.0 - tail, correct + 1, n - correct))
    return 100.0 * low, 100.0 * high


@dataclass(frozen=True)
class GroupScores:
    worst_group: float | None
    worst_group_ci: tuple[float, float] | None
    worst_group_id: int | None
    bias_balanced: float | None
    bias_balanced_ci: tuple[float, float] | None
    groups_counted: int
    worst_replicates: np.ndarray
    balanced_replicates: np.ndarray


# Samples gathered before their weighted group sums are taken. The sums cost one small matrix product per group
# present, whatever the number of samples in it, so taking them per 4,096 samples instead of per batch pays that
# cost a sixteenth as often at the default batch size. The gathered weights are one byte each (4 MB at 1,000
# replicates), and every reader takes the sums first, so nothing outside sees the difference.
GATHERED_ROWS = 4096


class GroupAccumulator:
    """Streams (predictions per condition, labels, bias values, bootstrap weights) batch by batch."""

    def __init__(self, condition_names: Sequence[str], *, num_classes: int, num_bias: int, replicates: int) -> None:
        self.condition_names = tuple(condition_names)
        self.num_classes, self.num_bias = int(num_classes), int(num_bias)
        size = self.num_classes * self.num_bias
        self.count = np.zeros(size, dtype=np.int64)
        self.correct = {c: np.zeros(size, dtype=np.int64) for c in self.condition_names}
        # [groups, K + 1, R]: per group, the weights summed over the samples each condition got right, then over all.
        self._sums = np.zeros((size, len(self.condition_names) + 1, replicates), dtype=np.float64)
        self._gathered: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (group [B], right [K, B], weights [B, R] uint8)
        self._gathered_rows = 0
        self.draws: dict[str, int] = {}  # condition -> R once its draws are combined (biasaudit/scanning/draws.py)

    def evaluated(self, condition: str) -> np.ndarray:
        """Per group, samples x draws: what a condition's correct count is out of (its mean over R draws)."""
        return self.count * self.draws.get(condition, 1)

    def weighted_evaluated(self, condition: str) -> np.ndarray:
        return self.weighted() * self.draws.get(condition, 1)

    def exact(self, condition: str, gid: int) -> tuple[float, float] | None:
        """The exact interval of a group's accuracy; over R draws, of its mean number right (an interval over R x n
        correlated trials would claim R times the samples)."""
        draws = self.draws.get(condition, 1)
        return clopper_pearson(round(self.correct[condition][gid] / draws), int(self.count[gid]))

    def combined_draws(self, groups: Mapping[str, Sequence[str]], multiplicities: np.ndarray) -> GroupAccumulator:
        """Each group of draws (base name -> names of its R draws) summed into its base condition, replicate sums
        weighted by how often each draw is picked in that replicate (biasaudit/scanning/draws.py)."""
        self._take_sums()
        members = {name for names in groups.values() for name in names[1:]}
        out = GroupAccumulator(
            [c for c in self.condition_names if c not in members],
            num_classes=self.num_classes,
            num_bias=self.num_bias,
            replicates=self._sums.shape[2],
        )
        out.count = self.count.copy()
        out._sums[:, -1] = self._sums[:, -1]
        for k, c in enumerate(out.condition_names):
            names = groups.get(c, [c])
            out.correct[c] = np.stack([self.correct[d] for d in names]).sum(axis=0)
            columns = [self.condition_names.index(d) for d in names]
            out._sums[:, k] = (
                sum(multiplicities[:, i] * self._sums[:, j] for i, j in enumerate(columns))
                if c in groups
                else self._sums[:, columns[0]]
            )
            if c in groups:
                out.draws[c] = len(names)
        return out

    def weighted(self, condition: str | None = None) -> np.ndarray:
        """[groups, R]: the Poisson weights summed over each group's correct predictions under `condition`, or over all
        its samples (None); float64 holding exact integers."""
        self._take_sums()
        return self._sums[:, -1 if condition is None else self.condition_names.index(condition)]

    def update(self, predictions: Mapping[str, np.ndarray], labels: np.ndarray, bias: np.ndarray, weights: np.ndarray) -> None:
        group = labels * self.num_bias + bias
        size = self.count.size
        self.count += np.bincount(group, minlength=size)
        right = np.stack([predictions[c] == labels for c in self.condition_names])  # [K, B]
        for c, row in zip(self.condition_names, right, strict=True):
            self.correct[c] += np.bincount(group[row], minlength=size)
        self._gathered.append((group, right, weights.astype(np.uint8)))  # Poisson(1) draws stop at 18 (randomness.py)
        self._gathered_rows += group.size
        if self._gathered_rows >= GATHERED_ROWS:
            self._take_sums()

    def _take_sums(self) -> None:
        if not self._gathered:
            return
        group = np.concatenate([g for g, _, _ in self._gathered])
        right = np.concatenate([r for _, r, _ in self._gathered], axis=1)
        weights = np.concatenate([w for _, _, w in self._gathered])
        self._gathered, self._gathered_rows = [], 0
        # Sorted once by group: each group's rows are one segment, whose weight sums for every condition at once (and,
        # by a row of ones, its total) are one matrix product: no dense one-hot over all groups.
        order = np.argsort(group, kind="stable")
        sorted_group = group[order]
        # The products run in float32 while every partial sum is an integer below 2**24 (exact_weighted_sums), and add into
        # float64 sums, which stay exact integers below 2**53: exact, and about twice the speed of float64.
        dtype: type[np.floating[Any]] = np.float32 if group.size < FLOAT32_EXACT_ROWS else np.float64
        rows = np.concatenate([right[:, order], np.ones((1, group.size), dtype=bool)]).astype(dtype)
        sorted_weights = weights[order].astype(dtype)
        starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
        for g, lo, hi in zip(sorted_group[starts], starts, np.r_[starts[1:], group.size], strict=True):
            self._sums[g] += rows[:, lo:hi] @ sorted_weights[lo:hi]

    def group_alignment(self, favoured: np.ndarray) -> np.ndarray:
        """Per (label, bias value) group: ALIGNED, CONFLICTING or NEUTRAL (diagnostics/favoured.py)."""
        labels = np.repeat(np.arange(self.num_classes), self.num_bias)
        return sample_alignment(np.tile(np.arange(self.num_bias), self.num_classes), labels, favoured)

    def by_alignment(self, favoured: np.ndarray) -> GroupAccumulator:
        """The same counts regrouped as (label, aligned 0 / conflicting 1 / neutral 2): every (label, bias value) group
        falls wholly into one of them (alignment depends on the pair only), so the regrouped sums are exact."""
        labels = np.repeat(np.arange(self.num_classes), self.num_bias)
        target = labels * len(ALIGNMENT_NAMES) + self.group_alignment(favoured)
        out = GroupAccumulator(
            self.condition_names, num_classes=self.num_classes, num_bias=len(ALIGNMENT_NAMES), replicates=self._sums.shape[2]
        )
        self._take_sums()
        out.draws = dict(self.draws)
        np.add.at(out.count, target, self.count)
        np.add.at(out._sums, target, self._sums)
        for c in self.condition_names:
            np.add.at(out.correct[c], target, self.correct[c])
        return out

    def merge(self, other: GroupAccumulator) -> None:
        self._take_sums()
        other._take_sums()
        self.count += other.count
        self._sums += other._sums
        for c in self.condition_names:
            self.correct[c] += other.correct[c]

    def scores(self, condition: str, *, min_group: int) -> GroupScores:
        counted = self.count >= min_group
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = 100.0 * self.correct[condition] / self.evaluated(condition)
            replicate = 100.0 * self.weighted(condition)[counted] / self.weighted_evaluated(condition)[counted]
        if not counted.any():
            empty = np.full(self._sums.shape[2], np.nan)
            return GroupScores(None, None, None, None, None, 0, empty, empty)
        ids = np.flatnonzero(counted)
        worst = ids[int(np.argmin(accuracy[ids]))]  # first of equal minima: deterministic
        with warnings.catch_warnings():  # a replicate in which no counted group drew a sample is NaN by design
            warnings.simplefilter("ignore", RuntimeWarning)
            worst_r = np.nanmin(replicate, axis=0)
            balanced_r = np.nanmean(replicate, axis=0)
        return GroupScores(
            float(accuracy[worst]),
            percentile_interval(worst_r),
            int(worst),
            float(np.mean(accuracy[ids])),
            percentile_interval(balanced_r),
            int(ids.size),
            worst_r,
            balanced_r,
        )
