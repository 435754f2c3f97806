"""Before/after comparison of two audits of the same split, conditions and seed."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from biasaudit.errors import InputError
from biasaudit.metrics.accuracy import percentile_interval

_MUST_MATCH = ("split", "conditions", "seed")


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def compare_audits(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Point deltas per condition and summary figure; refuses audits that were not taken the same way."""
    b_config, a_config = before["manifest"]["config"], after["manifest"]["config"]
    different = [k for k in _MUST_MATCH if b_config.get(k) != a_config.get(k)]
    if different:
        raise InputError(f"The two audits differ in {', '.join(different)}; a before/after comparison needs identical ones.")
    after_rows = {row["name"]: row for row in after["conditions"]}
    paired = "_replicates" in before and "_replicates" in after
    replicates = lambda audit, name: np.asarray(audit["_replicates"][name])  # noqa: E731
    conditions = []
    for row in before["conditions"]:
        other = after_rows.get(row["name"])
        if other is None:
            continue
        conditions.append({"name": row["name"], "before": row["accuracy"], "after": other["accuracy"],
                           "delta": _delta(row["accuracy"], other["accuracy"]),
                           "before_ci": row["accuracy_ci"], "after_ci": other["accuracy_ci"],
                           "flip_before": row["flip_rate"], "flip_after": other["flip_rate"],
                           "delta_ci": percentile_interval(replicates(after, row["name"]) - replicates(before, row["name"])) if paired else None})
    summary = {}
    for group in ("missing", "noisy"):
        b, a = before["summary"].get(group), after["summary"].get(group)
        if b and a:
            summary[group] = {key: {"before": b[key], "after": a[key], "delta": _delta(b[key], a[key])} for key in ("avg", "gap")}
            if paired:
                summary[group]["gap"]["delta_ci"] = _gap_change_interval(before, after, group)
            summary[group]["dominant"] = {"before": b["dominant"], "after": a["dominant"]}
            summary[group]["flip_rates"] = {"before": b["flip_rates"], "after": a["flip_rates"]}
    full_b, full_a = before["summary"]["full"]["accuracy"], after["summary"]["full"]["accuracy"]
    summary["full"] = {"before": full_b, "after": full_a, "delta": full_a - full_b,
                       "delta_ci": percentile_interval(replicates(after, "full") - replicates(before, "full")) if paired else None}
    jsd = {key: {"before": before["jsd"].get(key), "after": after["jsd"].get(key)} for key in ("mean", "weighted_mean")} \
        if before["jsd"].get("available") and after["jsd"].get("available") else None
    return {"schema": "biasaudit.compare", "schema_version": 1, "split": b_config["split"], "summary": summary,
            "conditions": conditions, "jsd": jsd, "verdict": verdict(summary),
            "paired": paired,
            "note": ("Deltas are after minus before, in points. " + (
                "Intervals of the deltas are paired bootstrap intervals (same samples, same replicate weights)." if paired else
                "These audits were read from files, which do not keep bootstrap replicates: deltas have no interval."))}


def _gap_change_interval(before: Mapping[str, Any], after: Mapping[str, Any], group: str):
    """Interval of Gap_after - Gap_before, the gap recomputed on every paired replicate (methods.md section 2)."""
    def gaps(audit):
        modalities = list(audit["summary"][group]["scores"])
        by_modality = {c["modality"]: np.asarray(audit["_replicates"][c["name"]]) for c in audit["conditions"] if c["group"] == group}
        stacked = np.stack([by_modality[m] for m in modalities])
        return stacked.max(axis=0) - stacked.min(axis=0)
    return percentile_interval(gaps(after) - gaps(before))


def verdict(summary: Mapping[str, Any]) -> str:
    full = summary["full"]
    parts = []
    if "missing" in summary:
        gap = summary["missing"]["gap"]
        parts.append(f"missing-modality Gap {gap['before']:.1f} -> {gap['after']:.1f} points")
    parts.append(f"Full accuracy {full['before']:.1f} -> {full['after']:.1f}")
    return ", ".join(parts) + "."
