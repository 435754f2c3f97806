"""Accuracy per (label, bias value) group, worst-group and bias-balanced accuracy (methods.md section 9).

Worst-group accuracy is the standard figure of the spurious-correlation literature (Sagawa et al. 2020):
a model that copies a shortcut is right on the groups where the shortcut agrees with the label and wrong
on the rare ones where it does not, which an average hides. Counts only: per condition a [groups]
correct count and per bootstrap replicate a [groups, replicates] weighted count, so the figures stream,
merge by addition and get the same paired intervals as every other accuracy of the scan.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from biasaudit.metrics.accuracy import FLOAT32_EXACT_ROWS, percentile_interval

# A split is called out of distribution when its share of bias-aligned samples (label = the class the bias
# value's training prior prefers) is this far below train's: the shortcut then misleads on many samples.
OOD_ALIGNED_DROP = 0.2


def preferred_class(prior_counts: np.ndarray) -> np.ndarray:
    """c(k) = argmax_y P_k(y) per bias value k; -1 for a bias value that never occurs in train."""
    counts = np.asarray(prior_counts)
    return np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)


def conflicting(bias: np.ndarray, labels: np.ndarray, preferred: np.ndarray) -> np.ndarray:
    """1 where the sample's bias value does not point to its label (including bias values unseen in train), else 0."""
    known = bias < len(preferred)
    pointed = np.full(len(bias), -1, dtype=np.int64)
    pointed[known] = preferred[bias[known]]
    return (pointed != labels).astype(np.int64)


# Grouping choice. (label, bias value) is the definition; but C x K groups need C x K x min_group samples. A
# split such as the demo's ood (10 digits x 10 colours in 323 samples, ~3 per group) has no group to count,
# and an in-distribution split has its few bias-conflicting samples in groups too small to count, so its
# worst group is a bias-aligned one and cannot see the bias. "auto" then falls back to (label, bias-aligned or
# conflicting), 2C groups, and says so. It decides on the split's labels and bias values only, so two audits
# of the same samples always group alike.
GROUPINGS = ("auto", "bias", "alignment")
AUTO_COVERAGE = 0.5  # auto keeps (label, bias value) when counted groups hold this share of all and of the conflicting samples
ALIGNMENT_NAMES = ("aligned", "conflicting")


def choose_grouping(fine: GroupAccumulator, *, min_group: int, grouping: str, prior_counts: np.ndarray) -> str:
    if grouping != "auto":
        return grouping
    counted = fine.count >= min_group
    label_of = np.arange(fine.count.size) // fine.num_bias
    pointed = _pointed(np.arange(fine.count.size) % fine.num_bias, preferred_class(prior_counts))
    conflicting = pointed != label_of
    shares = [fine.count[counted & within].sum() / fine.count[within].sum()
              for within in (np.ones_like(counted), conflicting) if fine.count[within].sum()]
    return "bias" if shares and min(shares) >= AUTO_COVERAGE else "alignment"


def _pointed(bias: np.ndarray, preferred: np.ndarray) -> np.ndarray:
    """c(k) per entry of `bias`; -1 for a bias value without a training prior."""
    out = np.full(len(bias), -1, dtype=np.int64)
    known = bias < len(preferred)
    out[known] = preferred[bias[known]]
    return out


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
        for c, row in zip(self.condition_names, right):
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
        dtype = np.float32 if group.size < FLOAT32_EXACT_ROWS else np.float64
        rows = np.concatenate([right[:, order], np.ones((1, group.size), dtype=bool)]).astype(dtype)
        sorted_weights = weights[order].astype(dtype)
        starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
        for g, lo, hi in zip(sorted_group[starts], starts, np.r_[starts[1:], group.size]):
            self._sums[g] += rows[:, lo:hi] @ sorted_weights[lo:hi]

    def by_alignment(self, preferred: np.ndarray) -> GroupAccumulator:
        """The same counts regrouped as (label, bias-aligned 0 or conflicting 1): every (label, bias value) group falls
        wholly into one of them (`conflicting` depends on the pair only), so the regrouped sums are exact."""
        labels = np.repeat(np.arange(self.num_classes), self.num_bias)
        target = labels * 2 + conflicting(np.tile(np.arange(self.num_bias), self.num_classes), labels, preferred)
        out = GroupAccumulator(self.condition_names, num_classes=self.num_classes, num_bias=2, replicates=self._sums.shape[2])
        self._take_sums()
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
            accuracy = 100.0 * self.correct[condition] / self.count
            replicate = 100.0 * self.weighted(condition)[counted] / self.weighted()[counted]
        if not counted.any():
            empty = np.full(self._sums.shape[2], np.nan)
            return GroupScores(None, None, None, None, None, 0, empty, empty)
        ids = np.flatnonzero(counted)
        worst = ids[int(np.argmin(accuracy[ids]))]  # first of equal minima: deterministic
        with warnings.catch_warnings():  # a replicate in which no counted group drew a sample is NaN by design
            warnings.simplefilter("ignore", RuntimeWarning)
            worst_r = np.nanmin(replicate, axis=0)
            balanced_r = np.nanmean(replicate, axis=0)
        return GroupScores(float(accuracy[worst]), percentile_interval(worst_r), int(worst), float(np.mean(accuracy[ids])),
                           percentile_interval(balanced_r), int(ids.size), worst_r, balanced_r)

    def section(self, *, prior_counts: np.ndarray, min_group: int, class_names: Sequence[str], bias_names: Sequence[str] | None,
                bias_source: str, table_conditions: Sequence[str], train_aligned_share: float | None,
                alignment: bool = False, asked: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The audit's `groups` section, and the per-replicate worst-group / bias-balanced accuracies that
        compare and gate pair up (bootstrap.derived). alignment: the bias column is 0 aligned / 1 conflicting."""
        label_of = np.arange(self.count.size) // self.num_bias
        bias_of = np.arange(self.count.size) % self.num_bias
        if alignment:
            is_conflicting = bias_of == 1
            known = np.ones(self.count.size, dtype=bool)
            bias_names = ALIGNMENT_NAMES
        else:
            pointed = _pointed(bias_of, preferred_class(prior_counts))
            known = pointed >= 0
            is_conflicting = known & (pointed != label_of)
        rows = []
        for gid in np.flatnonzero(self.count):
            label, bias = int(label_of[gid]), int(bias_of[gid])
            accuracy = {c: float(100.0 * self.correct[c][gid] / self.count[gid]) for c in table_conditions}
            rows.append({"label": label, "label_name": _name(class_names, label), "bias": bias, "bias_name": _name(bias_names, bias),
                         "n": int(self.count[gid]), "conflicting": bool(is_conflicting[gid]) if known[gid] else None,
                         "counted": bool(self.count[gid] >= min_group), "accuracy": accuracy})
        rows.sort(key=lambda r: (r["accuracy"].get("full", 0.0), r["label"], r["bias"]))
        conditions, derived = {}, {}
        aligned = known & ~is_conflicting
        for c in self.condition_names:
            s = self.scores(c, min_group=min_group)
            conditions[c] = {"worst_group": s.worst_group, "worst_group_ci": s.worst_group_ci,
                             "worst_group_label": None if s.worst_group_id is None else
                             f"{_name(class_names, int(label_of[s.worst_group_id]))} / {_name(bias_names, int(bias_of[s.worst_group_id]))}",
                             "bias_balanced": s.bias_balanced, "bias_balanced_ci": s.bias_balanced_ci, "groups_counted": s.groups_counted,
                             "conflicting_accuracy": _pooled(self.correct[c], self.count, is_conflicting),
                             "aligned_accuracy": _pooled(self.correct[c], self.count, aligned)}
            derived[f"worst_group:{c}"] = s.worst_replicates
            derived[f"bias_balanced:{c}"] = s.balanced_replicates
            conditions[c]["conflicting_accuracy_ci"] = _pooled_interval(self.weighted(c), self.weighted(), is_conflicting)
        split_aligned = float(self.count[aligned].sum() / self.count.sum()) if self.count.sum() else None
        conflicting_samples = int(self.count[is_conflicting].sum())
        counted_conflicting = int((is_conflicting & (self.count >= min_group)).sum())
        blind = None
        if conflicting_samples and not counted_conflicting:
            blind = (f"none of the split's {conflicting_samples} bias-conflicting samples is in a group of at least {min_group} samples "
                     "(min_group), so worst-group and bias-balanced accuracy cover bias-aligned groups only and cannot see the bias")
        shift = {"train_aligned_share": train_aligned_share, "split_aligned_share": split_aligned,
                 "ood": bool(train_aligned_share is not None and split_aligned is not None
                             and split_aligned <= train_aligned_share - OOD_ALIGNED_DROP)}
        below = sum(1 for r in rows if not r["counted"])
        notes = []
        if alignment:
            why = ("as asked (--group-by alignment)" if asked else f"because too few of the split's samples, or of its bias-conflicting "
                   f"ones, are in (label, bias value) groups of at least {min_group} (--group-by auto)")
            notes.append(f"Groups are (label, bias-aligned or conflicting) {why}; a sample is aligned when the training prior of its "
                         "bias value prefers its label.")
        if not any(r["counted"] for r in rows):
            notes.append(f"No group has {min_group} samples (min_group), so there is no worst-group accuracy.")
        elif below:
            notes.append(f"{below} of {len(rows)} groups have fewer than {min_group} samples and are left out of worst-group and bias-balanced accuracy.")
        if blind:
            notes.append(blind[0].upper() + blind[1:] + "; read the pooled bias-conflicting accuracy instead.")
        return ({"available": True, "note": " ".join(notes) or None, "bias_source": bias_source, "blind": blind,
                 "conflicting_samples": conflicting_samples, "counted_conflicting_groups": counted_conflicting,
                 "grouping": "label x bias-aligned/conflicting" if alignment else "label x bias value", "min_group": min_group,
                 "groups": rows, "conditions": conditions, "shift": shift}, derived)


def train_aligned_share(prior_counts: np.ndarray) -> float | None:
    """Share of training samples whose label is the class their bias value's prior prefers."""
    counts = np.asarray(prior_counts)
    total = counts.sum()
    return float(counts.max(axis=1).sum() / total) if total else None


def _pooled(correct: np.ndarray, count: np.ndarray, mask: np.ndarray) -> float | None:
    n = count[mask].sum()
    return float(100.0 * correct[mask].sum() / n) if n else None


def _pooled_interval(correct: np.ndarray, total: np.ndarray, mask: np.ndarray) -> tuple[float, float] | None:
    if not mask.any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return percentile_interval(100.0 * correct[mask].sum(axis=0) / total[mask].sum(axis=0))


def _name(names: Sequence[str] | None, value: int) -> str:
    return str(names[value]) if names and value < len(names) else str(value)
