"""The audit's `groups` section from the group counts (groups.py): the table of groups, worst-group and bias-balanced
accuracy per condition with their intervals, the pooled bias-conflicting and aligned accuracies, whether worst-group
accuracy can see the bias on this split (`blind`), whether the split is out of distribution for the bias (`shift`), and
the notes that say why."""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import numpy as np

from biasaudit.diagnostics.accuracy import percentile_interval
from biasaudit.diagnostics.favoured import ALIGNED, ALIGNMENT_NAMES, CONFLICTING, NEUTRAL
from biasaudit.diagnostics.groups import GroupAccumulator, GroupScores

# A split is called out of distribution when its share of bias-aligned samples (label among the classes the bias
# value's training prior favours, diagnostics/favoured.py) is this far below train's: the shortcut then misleads on many samples.
OOD_ALIGNED_DROP = 0.2
# A counted group smaller than this gets a wide exact interval; the section says how many there are.
SMALL_GROUP = 30


def groups_section(
    counts: GroupAccumulator,
    *,
    favoured: np.ndarray,
    min_group: int,
    class_names: Sequence[str],
    bias_names: Sequence[str] | None,
    bias_source: str,
    table_conditions: Sequence[str],
    train_aligned_share: float | None,
    alignment: bool = False,
    asked: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The audit's `groups` section, and the per-replicate worst-group / bias-balanced accuracies that
    compare and gate pair up (bootstrap.derived). alignment: the bias column is 0 aligned / 1 conflicting / 2 neutral."""
    label_of = np.arange(counts.count.size) // counts.num_bias
    bias_of = np.arange(counts.count.size) % counts.num_bias
    if alignment:
        state = bias_of
        bias_names = ALIGNMENT_NAMES
    else:
        state = counts.group_alignment(favoured)
    is_conflicting, aligned = state == CONFLICTING, state == ALIGNED
    counted = counts.count >= min_group
    uncounted = ~counted & (counts.count > 0)
    rows: list[dict[str, Any]] = []
    for gid in map(int, np.flatnonzero(counts.count)):
        label, bias, n = int(label_of[gid]), int(bias_of[gid]), int(counts.count[gid])
        rows.append(
            {
                "label": label,
                "label_name": _name(class_names, label),
                "bias": bias,
                "bias_name": _name(bias_names, bias),
                "n": n,
                "conflicting": None if state[gid] == NEUTRAL else bool(is_conflicting[gid]),
                "alignment": ALIGNMENT_NAMES[int(state[gid])],
                "counted": bool(counted[gid]),
                "accuracy": {c: float(100.0 * counts.correct[c][gid] / counts.evaluated(c)[gid]) for c in table_conditions},
                "accuracy_exact_ci": {c: counts.exact(c, gid) for c in table_conditions},
            }
        )
    rows.sort(key=lambda r: (r["accuracy"].get("full", 0.0), r["label"], r["bias"]))
    conditions: dict[str, dict[str, Any]] = {}
    derived: dict[str, np.ndarray] = {}
    for c in counts.condition_names:
        s = counts.scores(c, min_group=min_group)
        conditions[c] = {
            "worst_group": s.worst_group,
            "worst_group_ci": s.worst_group_ci,
            "worst_group_label": None
            if s.worst_group_id is None
            else f"{_name(class_names, int(label_of[s.worst_group_id]))} / {_name(bias_names, int(bias_of[s.worst_group_id]))}",
            "bias_balanced": s.bias_balanced,
            "bias_balanced_ci": s.bias_balanced_ci,
            "groups_counted": s.groups_counted,
            **_worst_group_detail(counts, c, s, counted),
            "conflicting_accuracy": _pooled(counts.correct[c], counts.evaluated(c), is_conflicting),
            "conflicting_accuracy_ci": _pooled_interval(counts.weighted(c), counts.weighted_evaluated(c), is_conflicting),
            "aligned_accuracy": _pooled(counts.correct[c], counts.evaluated(c), aligned),
            "uncounted": _uncounted(counts, c, uncounted, is_conflicting),
        }
        derived[f"worst_group:{c}"] = s.worst_replicates
        derived[f"bias_balanced:{c}"] = s.balanced_replicates
    # Over the samples whose bias value favours some class, as train's share is: neutral ones cannot shift a split.
    pointed = int(counts.count[aligned | is_conflicting].sum())
    split_aligned = float(counts.count[aligned].sum() / pointed) if pointed else None
    conflicting_samples = int(counts.count[is_conflicting].sum())
    counted_conflicting = int((is_conflicting & counted).sum())
    blind = None
    if conflicting_samples and not counted_conflicting:
        blind = (
            f"none of the split's {conflicting_samples} bias-conflicting samples is in a group of at least {min_group} samples "
            "(min_group), so worst-group and bias-balanced accuracy cover bias-aligned groups only and cannot see the bias"
        )
    elif not conflicting_samples and aligned.any() and counts.count[aligned].sum():
        blind = (
            "the split has no bias-conflicting samples, so worst-group and bias-balanced accuracy cover groups the shortcut "
            "never misleads and cannot see the bias"
        )
    shift = {
        "train_aligned_share": train_aligned_share,
        "split_aligned_share": split_aligned,
        "ood": bool(
            train_aligned_share is not None
            and split_aligned is not None
            and split_aligned <= train_aligned_share - OOD_ALIGNED_DROP
        ),
    }
    small = int((counted & (counts.count < SMALL_GROUP)).sum())
    notes = []
    if alignment:
        why = (
            "as asked (--group-by alignment)"
            if asked
            else f"because too few of the split's samples, or of its bias-conflicting "
            f"ones, are in (label, bias value) groups of at least {min_group} (--group-by auto)"
        )
        notes.append(
            f"Groups are (label, bias-aligned, conflicting or neutral) {why}; a sample is aligned when its label is among "
            "the classes its bias value's training prior favours, neutral when that value favours none."
        )
    if not counted.any():
        notes.append(f"No group has {min_group} samples (min_group), so there is no worst-group accuracy.")
    elif uncounted.any():
        left = conditions["full"]["uncounted"] if "full" in conditions else None
        scored = f"; together they score {left['accuracy']:.1f}% (Full)" if left and left["accuracy"] is not None else ""
        notes.append(
            f"{int(uncounted.sum())} of {len(rows)} groups ({int(counts.count[uncounted].sum())} samples) have fewer than "
            f"{min_group} samples and are left out of worst-group and bias-balanced accuracy{scored}."
        )
    if small:
        notes.append(
            f"{small} counted group(s) have fewer than {SMALL_GROUP} samples: their accuracies carry wide exact intervals."
        )
    if blind:
        notes.append(blind[0].upper() + blind[1:] + "; read the pooled bias-conflicting accuracy instead.")
    return (
        {
            "available": True,
            "note": " ".join(notes) or None,
            "bias_source": bias_source,
            "blind": blind,
            "conflicting_samples": conflicting_samples,
            "counted_conflicting_groups": counted_conflicting,
            "grouping": "label x bias-aligned/conflicting/neutral" if alignment else "label x bias value",
            "min_group": min_group,
            "small_groups": small,
            "groups": rows,
            "conditions": conditions,
            "shift": shift,
        },
        derived,
    )


def _worst_group_detail(counts: GroupAccumulator, condition: str, scores: GroupScores, counted: np.ndarray) -> dict[str, Any]:
    """The worst group's size and exact interval, and how many counted groups share the minimum: a worst group of 0%
    means something else when eleven groups sit at 0 than when one does, and a bootstrap of 0/11 has no width."""
    if scores.worst_group_id is None or scores.worst_group is None:  # both None together: no counted group
        return {}
    gid = scores.worst_group_id
    accuracy = 100.0 * counts.correct[condition][counted] / counts.evaluated(condition)[counted]
    return {
        "worst_group_n": int(counts.count[gid]),
        "worst_group_exact_ci": counts.exact(condition, gid),
        "groups_at_minimum": int(np.count_nonzero(np.isclose(accuracy, scores.worst_group))),
    }


def _uncounted(counts: GroupAccumulator, condition: str, uncounted: np.ndarray, is_conflicting: np.ndarray) -> dict[str, Any]:
    """The samples of groups below min_group, pooled: what worst-group accuracy does not see."""
    n = int(counts.count[uncounted].sum())
    return {
        "groups": int(uncounted.sum()),
        "n": n,
        "conflicting_n": int(counts.count[uncounted & is_conflicting].sum()),
        "accuracy": _pooled(counts.correct[condition], counts.evaluated(condition), uncounted),
        "accuracy_ci": _pooled_interval(counts.weighted(condition), counts.weighted_evaluated(condition), uncounted)
        if n
        else None,
    }


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
