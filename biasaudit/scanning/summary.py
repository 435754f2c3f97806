"""From per-condition scores to the audit's summary, ratio sweep and per-class reliance sections."""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping, Sequence

from biasaudit.scanning.conditions import Condition
from biasaudit.diagnostics.accuracy import ConditionScores
from biasaudit.diagnostics.gap import dominant_modality, summarize_gap


def condition_rows(conditions: Sequence[Condition], scores: Mapping[str, ConditionScores]) -> list[dict[str, Any]]:
    full = scores["full"].accuracy
    rows = []
    for condition in conditions:
        score = scores[condition.name]
        row = {**condition.to_dict(), **score.to_dict()}
        # methods.md section 2: an impaired score above the same model's Full score.
        row["negative_transfer"] = condition.group != "full" and score.accuracy > full
        rows.append(row)
    return rows


def group_summary(group: str, conditions: Sequence[Condition], scores: Mapping[str, ConditionScores]) -> dict[str, Any] | None:
    """Avg, Gap (with paired intervals), flip rates and the dominant modality for one impairment type."""
    members = [c for c in conditions if c.group == group]
    if len(members) < 2:
        return None
    accuracy = {c.impaired_modality: scores[c.name].accuracy for c in members}
    replicates = {c.impaired_modality: scores[c.name].replicate_accuracy for c in members}
    flips = {c.impaired_modality: scores[c.name].flip_rate for c in members}
    gap = summarize_gap(accuracy, replicates=replicates)
    out = gap.to_dict()
    out["flip_rates"] = flips
    # No prediction changes under any impairment: no modality dominates.
    out["dominant"] = dominant_modality(flips) if max(flips.values()) > 0 else None
    return out


def ratio_sweep(
    conditions: Sequence[Condition], scores: Mapping[str, ConditionScores], *, muted_fractions: Mapping[str, float]
) -> dict[str, list[dict[str, Any]]]:
    """`ratio` is the requested r; `muted_fraction` is the share actually muted (each sample is muted when its
    fixed uniform draw is below r, which keeps the subsets nested across r, so the realised share varies around r)."""
    sweep: dict[str, list[dict[str, Any]]] = {}
    for condition in conditions:
        if condition.group != "ratio":
            continue
        score = scores[condition.name]
        sweep.setdefault(condition.impaired_modality, []).append(
            {
                "ratio": condition.severity,
                "muted_fraction": muted_fractions.get(condition.name),
                "accuracy": score.accuracy,
                "accuracy_ci": list(score.accuracy_ci) if score.accuracy_ci is not None else None,
                "flip_rate": score.flip_rate,
            }
        )
    for points in sweep.values():
        points.sort(key=lambda p: p["ratio"])
    return sweep


def reliance(
    conditions: Sequence[Condition], scores: Mapping[str, ConditionScores], *, class_names: Sequence[str]
) -> dict[str, Any]:
    """Per class, how many accuracy points are lost when each modality is muted."""
    full = scores["full"].per_class_accuracy
    drop: dict[str, list[float | None]] = {}
    for condition in conditions:
        if condition.group == "missing":
            muted = scores[condition.name].per_class_accuracy
            drop[condition.impaired_modality] = [
                None if f is None or m is None else f - m for f, m in zip(full, muted, strict=True)
            ]
    return {"classes": list(class_names), "full": list(full), "drop": drop}
