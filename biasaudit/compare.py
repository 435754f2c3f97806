"""Before/after comparison of two audits of the same split, conditions and seed.

Deltas get paired bootstrap intervals whenever both audits kept their replicate counts and provably
drew the same weights for the same samples (same seed, replicate count and sample fingerprint), whether
the audits are in memory (inside `fix`) or read back from files: there is one code path. Otherwise the
comparison says exactly why it is not paired and gives plain deltas, never an interval that pairs
replicates of different samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from biasaudit.errors import InputError
from biasaudit.fingerprint import fingerprint_difference
from biasaudit.metrics.accuracy import BootstrapCounts, percentile_interval

_MUST_MATCH = ("split", "conditions", "seed")
GROUPS = ("missing", "noisy")


@dataclass(frozen=True, eq=False)
class Pairing:
    """The replicate counts of both audits when they pair up replicate by replicate; else why not."""

    before: BootstrapCounts | None
    after: BootstrapCounts | None
    reason: str | None  # None exactly when paired

    @property
    def paired(self) -> bool:
        return self.reason is None

    def delta_interval(self, condition: str) -> tuple[float, float] | None:
        """95% interval of accuracy_after - accuracy_before of one condition, in points; None when unpaired."""
        if not self.paired:
            return None
        return percentile_interval(self.after.accuracy(condition) - self.before.accuracy(condition))


def _lacking(before: Mapping[str, Any], after: Mapping[str, Any], key: str, what: str) -> str | None:
    missing = [name for name, audit in (("before", before), ("after", after)) if key not in audit]
    if not missing:
        return None
    who = "neither audit keeps" if len(missing) == 2 else f"the {missing[0]} audit keeps no"
    return f"{who} {what} (written by an older biasaudit)"


def pair_replicates(before: Mapping[str, Any], after: Mapping[str, Any]) -> Pairing:
    """Pair the bootstrap replicates of two audits only when they drew the same weights for the same samples."""
    def unpaired(reason: str) -> Pairing:
        return Pairing(before=None, after=None, reason=reason)

    for key, what in (("bootstrap", "bootstrap replicates"), ("samples", "sample fingerprints")):
        lacking = _lacking(before, after, key, what)
        if lacking is not None:
            return unpaired(lacking)
    b, a = (BootstrapCounts.from_dict(audit["bootstrap"], conditions=[row["name"] for row in audit["conditions"]])
            for audit in (before, after))
    if b.seed != a.seed:
        return unpaired(f"different bootstrap seeds ({b.seed} vs {a.seed})")
    if b.replicates != a.replicates:
        return unpaired(f"different replicate counts ({b.replicates} vs {a.replicates})")
    different = fingerprint_difference(before["samples"], after["samples"])
    if different is not None:
        return unpaired(different)
    if not np.array_equal(b.total_weight, a.total_weight):
        # Same seed, replicate count and samples imply the same weights; only another weighting scheme
        # (another biasaudit version) or an edited file gets here.
        return unpaired("different replicate weights (the totals differ although seed, replicate count and samples match)")
    return Pairing(before=b, after=a, reason=None)


_DEFINITION = ("group", "modality", "impairment", "severity")


def _check_same_conditions(before_rows: list[Mapping[str, Any]], after_rows: list[Mapping[str, Any]]) -> None:
    """Both audits must have run the same conditions with the same impairments: the same `--conditions`
    string can still mean another impairment (e.g. `--mute image=mean` against a black image), and a delta
    between two different impairments would look like a change of the model."""
    definitions = [{row["name"]: tuple(row.get(k) for k in _DEFINITION) for row in rows} for rows in (before_rows, after_rows)]
    if definitions[0].keys() != definitions[1].keys():
        only = sorted(definitions[0].keys() ^ definitions[1].keys())
        raise InputError(f"The two audits ran different conditions ({', '.join(only)} in one only); a before/after comparison needs the same ones.")
    changed = [name for name, definition in definitions[0].items() if definitions[1][name] != definition]
    if changed:
        details = "; ".join(f"{name}: {definitions[0][name][2]} vs {definitions[1][name][2]}" for name in changed)
        raise InputError(f"The two audits impaired differently under the same condition names ({details}); "
                         "a before/after comparison needs the same impairments (check --mute).")


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def compare_audits(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Deltas per condition and summary figure, with paired intervals when the audits pair up (see
    `pair_replicates`); refuses audits that were not taken the same way."""
    b_config, a_config = before["manifest"]["config"], after["manifest"]["config"]
    different = [k for k in _MUST_MATCH if b_config.get(k) != a_config.get(k)]
    if different:
        raise InputError(f"The two audits differ in {', '.join(different)}; a before/after comparison needs identical ones.")
    _check_same_conditions(before["conditions"], after["conditions"])
    pairing = pair_replicates(before, after)
    after_rows = {row["name"]: row for row in after["conditions"]}
    conditions = []
    for row in before["conditions"]:
        other = after_rows[row["name"]]
        conditions.append({"name": row["name"], "before": row["accuracy"], "after": other["accuracy"],
                           "delta": _delta(row["accuracy"], other["accuracy"]),
                           "before_ci": row["accuracy_ci"], "after_ci": other["accuracy_ci"],
                           "flip_before": row["flip_rate"], "flip_after": other["flip_rate"],
                           "delta_ci": pairing.delta_interval(row["name"])})
    summary = {}
    for group in GROUPS:
        b, a = before["summary"].get(group), after["summary"].get(group)
        if b and a:
            summary[group] = {key: {"before": b[key], "after": a[key], "delta": _delta(b[key], a[key])} for key in ("avg", "gap")}
            intervals = _group_change_intervals(before, after, pairing, group)
            for key in ("avg", "gap"):
                summary[group][key]["delta_ci"] = intervals[key]
            summary[group]["dominant"] = {"before": b["dominant"], "after": a["dominant"]}
            summary[group]["flip_rates"] = {"before": b["flip_rates"], "after": a["flip_rates"]}
    full_b, full_a = before["summary"]["full"]["accuracy"], after["summary"]["full"]["accuracy"]
    summary["full"] = {"before": full_b, "after": full_a, "delta": full_a - full_b, "delta_ci": pairing.delta_interval("full")}
    jsd = {key: {"before": before["jsd"].get(key), "after": after["jsd"].get(key)} for key in ("mean", "weighted_mean")} \
        if before["jsd"].get("available") and after["jsd"].get("available") else None
    return {"schema": "biasaudit.compare", "schema_version": 1, "split": b_config["split"], "summary": summary,
            "conditions": conditions, "jsd": jsd, "verdict": verdict(summary),
            "paired": pairing.paired, "unpaired_reason": pairing.reason,
            "note": "Deltas are after minus before, in points. " + (
                "Intervals of the deltas are paired bootstrap intervals (same samples, same replicate weights)." if pairing.paired else
                f"Not paired: {pairing.reason}; deltas have no interval.")}


def _group_replicates(audit: Mapping[str, Any], counts: BootstrapCounts, group: str) -> np.ndarray:
    """[modalities, replicates] accuracies of a group's conditions, in the order of its summary scores."""
    by_modality = {c["modality"]: c["name"] for c in audit["conditions"] if c["group"] == group}
    return np.stack([counts.accuracy(by_modality[m]) for m in audit["summary"][group]["scores"]])


def _group_change_intervals(before: Mapping[str, Any], after: Mapping[str, Any], pairing: Pairing, group: str) -> dict[str, Any]:
    """Intervals of Avg_after - Avg_before and Gap_after - Gap_before: both recomputed on every paired replicate
    (methods.md section 2; Gap = max - min over modalities, which is |A_a - A_b| for two)."""
    if not pairing.paired:
        return {"avg": None, "gap": None}
    b, a = _group_replicates(before, pairing.before, group), _group_replicates(after, pairing.after, group)
    avg_change = a.mean(axis=0) - b.mean(axis=0)
    gap_change = (a.max(axis=0) - a.min(axis=0)) - (b.max(axis=0) - b.min(axis=0))
    return {"avg": percentile_interval(avg_change), "gap": percentile_interval(gap_change)}


def _judge(delta: float | None, interval: Any, *, lower: str, higher: str, same: str) -> str:
    """One word for a change: by its paired 95% interval when there is one (excludes zero or not), else by
    the plain difference, marked as such."""
    if delta is None:
        return same
    if interval:
        lo, hi = interval
        return lower if hi < 0 else higher if lo > 0 else same
    word = lower if delta < 0 else higher if delta > 0 else same
    return f"{word} (plain difference, no interval)"


def verdict(summary: Mapping[str, Any]) -> str:
    """E.g. "missing-modality Gap 39.7 -> 30.5 points, Full accuracy 93.8 -> 93.6: bias reduced, no clear accuracy
    change". A change counts when its paired interval excludes zero, so a noisy shift reads as no change. A flip
    of the dominant modality and a significant rise of the noisy-input Gap are named too."""
    full = summary["full"]
    figures, words = [], []
    if "missing" in summary:
        gap = summary["missing"]["gap"]
        figures.append(f"missing-modality Gap {gap['before']:.1f} -> {gap['after']:.1f} points")
        words.append(_judge(gap["delta"], gap.get("delta_ci"), lower="bias reduced", higher="bias increased", same="Gap unchanged"))
        dominant = summary["missing"].get("dominant") or {}
        if dominant.get("before") and dominant.get("after") and dominant["before"] != dominant["after"]:
            # Overshooting: the model now leans on the other modality, which a smaller Gap alone does not say.
            words.append(f"the model now leans on {dominant['after']} instead of {dominant['before']}")
    figures.append(f"Full accuracy {full['before']:.1f} -> {full['after']:.1f}")
    lost = f"{-full['delta']:.1f} points of accuracy lost" if full["delta"] is not None else ""
    words.append(_judge(full["delta"], full.get("delta_ci"), lower=lost, higher="accuracy gained", same="no clear accuracy change"))
    noisy = (summary.get("noisy") or {}).get("gap")
    if noisy and _judge(noisy["delta"], noisy.get("delta_ci"), lower="", higher="up", same="") == "up":
        words.append(f"but the noisy-input Gap rose {noisy['before']:.1f} -> {noisy['after']:.1f}")
    return ", ".join(figures) + ": " + ", ".join(words) + "."
