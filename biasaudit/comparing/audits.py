"""compare_audits: before/after comparison of two audits of the same split, conditions and seed.

Two kinds of figures: the bias measures (`bias`: carrier, bias-follow rates, worst-group, bias-balanced and
OOD accuracy, methods.md section 9), which decide the verdict, and reliance (`summary`: Avg, Gap, flip rates),
its context; see verdict.py for why the Gap alone never says "bias increased".

Deltas get paired bootstrap intervals whenever both audits kept their replicate counts and provably
drew the same weights for the same samples (same seed, replicate count and sample fingerprint), whether
the audits are in memory (inside `fix`) or read back from files: there is one code path. Otherwise the
comparison says exactly why it is not paired and gives plain deltas, never an interval that pairs
replicates of different samples.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from biasaudit.errors import InputError
from biasaudit.diagnostics.accuracy import percentile_interval
from biasaudit.verdict import compare_sentences, compare_verdict
from biasaudit.comparing.bias import compare_bias, delta
from biasaudit.comparing.pairing import Pairing, group_replicates, pair_replicates

_MUST_MATCH = ("split", "conditions", "seed")
GROUPS = ("missing", "noisy")


_DEFINITION = ("group", "modality", "impairment", "severity")


def _check_same_conditions(before_rows: list[Mapping[str, Any]], after_rows: list[Mapping[str, Any]]) -> None:
    """Both audits must have run the same conditions with the same impairments: the same `--conditions`
    string can still mean another impairment (e.g. `--mute image=mean` against a black image), and a delta
    between two different impairments would look like a change of the model."""
    definitions = [{row["name"]: tuple(row.get(k) for k in _DEFINITION) for row in rows} for rows in (before_rows, after_rows)]
    if definitions[0].keys() != definitions[1].keys():
        only = sorted(definitions[0].keys() ^ definitions[1].keys())
        raise InputError(
            f"The two audits ran different conditions ({', '.join(only)} in one only); "
            "a before/after comparison needs the same ones."
        )
    changed = [name for name, definition in definitions[0].items() if definitions[1][name] != definition]
    if changed:
        details = "; ".join(f"{name}: {definitions[0][name][2]} vs {definitions[1][name][2]}" for name in changed)
        raise InputError(
            f"The two audits impaired differently under the same condition names ({details}); "
            "a before/after comparison needs the same impairments (check --mute)."
        )


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
        conditions.append(
            {
                "name": row["name"],
                "before": row["accuracy"],
                "after": other["accuracy"],
                "delta": delta(row["accuracy"], other["accuracy"]),
                "before_ci": row["accuracy_ci"],
                "after_ci": other["accuracy_ci"],
                "flip_before": row["flip_rate"],
                "flip_after": other["flip_rate"],
                "delta_ci": pairing.delta_interval(row["name"]),
            }
        )
    summary: dict[str, Any] = {}
    for group in GROUPS:
        b, a = before["summary"].get(group), after["summary"].get(group)
        if b and a:
            summary[group] = {key: {"before": b[key], "after": a[key], "delta": delta(b[key], a[key])} for key in ("avg", "gap")}
            intervals = _group_change_intervals(before, after, pairing, group)
            for key in ("avg", "gap"):
                summary[group][key]["delta_ci"] = intervals[key]
            summary[group]["dominant"] = {"before": b["dominant"], "after": a["dominant"]}
            summary[group]["flip_rates"] = {"before": b["flip_rates"], "after": a["flip_rates"]}
    full_b, full_a = before["summary"]["full"]["accuracy"], after["summary"]["full"]["accuracy"]
    summary["full"] = {"before": full_b, "after": full_a, "delta": full_a - full_b, "delta_ci": pairing.delta_interval("full")}
    jsd = (
        {key: {"before": before["jsd"].get(key), "after": after["jsd"].get(key)} for key in ("mean", "weighted_mean")}
        if before["jsd"].get("available") and after["jsd"].get("available")
        else None
    )
    comparison = {
        "schema": "biasaudit.compare",
        "schema_version": 1,
        "split": b_config["split"],
        "summary": summary,
        "conditions": conditions,
        "jsd": jsd,
        "bias": compare_bias(before, after, pairing),
        "paired": pairing.paired,
        "unpaired_reason": pairing.reason,
        "note": "Deltas are after minus before, in points (bias-follow rates: fractions). "
        + (
            "Intervals of the deltas are paired bootstrap intervals (same samples, same replicate weights)."
            if pairing.paired
            else f"Not paired: {pairing.reason}; deltas have no interval."
        ),
    }
    comparison["verdict"] = compare_verdict(comparison)
    comparison["verdict_sentences"] = compare_sentences(comparison)
    return comparison


def _group_change_intervals(before: Mapping[str, Any], after: Mapping[str, Any], pairing: Pairing, group: str) -> dict[str, Any]:
    """Intervals of Avg_after - Avg_before and Gap_after - Gap_before: both recomputed on every paired replicate
    (methods.md section 2; Gap = max - min over modalities, which is |A_a - A_b| for two)."""
    counts = pairing.counts
    if counts is None:
        return {"avg": None, "gap": None}
    b, a = group_replicates(before, counts[0], group), group_replicates(after, counts[1], group)
    avg_change = a.mean(axis=0) - b.mean(axis=0)
    gap_change = (a.max(axis=0) - a.min(axis=0)) - (b.max(axis=0) - b.min(axis=0))
    return {"avg": percentile_interval(avg_change), "gap": percentile_interval(gap_change)}
