"""Bias rules, recommended first: they measure the shortcut itself (methods.md section 9) — worst-group accuracy, the
excess bias-follow rate of the modality that carries the bias, and the JSD between the mistakes and the bias.

Each function is one rule's evaluator, registered in biasaudit.gating.registry:
evaluate(current, comparison, baseline, limits, significant) -> [RuleVerdict, ...].
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from biasaudit.gating.limits import ALL, JSD_STATISTICS
from biasaudit.gating.verdicts import RuleVerdict, as_gate_words, interval_words, judged, minimums_met, points
from biasaudit.verdict.words import number, pct


def _group_rows(audit: Mapping[str, Any], who: str) -> tuple[Mapping[str, Any] | None, str | None]:
    """The per-condition worst-group figures of an audit, or why there are none."""
    groups = audit.get("groups")
    if not isinstance(groups, Mapping):
        return None, f"the {who} audit has no group accuracies (written by an older biasaudit: scan again)"
    if not groups.get("available", True):
        return None, f"the {who} audit has no group accuracies ({groups.get('note') or 'not available'})"
    if groups.get("blind"):
        return None, (
            f"the {who} audit's worst-group accuracy cannot see the bias: {groups['blind']} (scan a split with more "
            "bias-conflicting samples, lower --min-group, or use --group-by alignment)"
        )
    return groups.get("conditions") or {}, None


def min_worst_group(
    current: Mapping[str, Any], comparison: Any, baseline: Any, limits: Mapping[str, float], significant: bool
) -> list[RuleVerdict]:
    """The worst-group accuracy of condition C in the current audit >= P percent; ERROR when it cannot see the bias."""
    groups, why = _group_rows(current, "current")
    rows = {c: {"value": v.get("worst_group"), "ci": v.get("worst_group_ci")} for c, v in (groups or {}).items()}
    section = current.get("groups")
    note = (section.get("note") if isinstance(section, Mapping) else None) or "the audit holds null"
    return minimums_met("min_worst_group", "worst-group accuracy", rows, why, limits, null_note=note)


def max_worst_group_drop(
    current: Any, comparison: Mapping[str, Any], baseline: Any, limits: Mapping[str, float], significant: bool
) -> list[RuleVerdict]:
    """The worst-group accuracy of C (plain X: full) fell by at most X points against the baseline."""
    entries = comparison["bias"]["worst_group"]
    out = []
    for condition, limit in limits.items():
        name = f"max_worst_group_drop[{condition}]"
        if entries is None:
            why = as_gate_words(comparison["bias"]["lacking"].get("groups") or ["an audit has no group accuracies"])
            out.append(RuleVerdict(name, "ERROR", f"no worst-group accuracy to compare: {'; '.join(why)}", {"limit": limit}))
            continue
        entry = entries.get(condition)
        if entry is None or entry["delta"] is None:
            out.append(
                RuleVerdict(
                    name,
                    "ERROR",
                    f"no worst-group accuracy of condition {condition!r} in both audits. Available: "
                    f"{', '.join(c for c, e in entries.items() if e['delta'] is not None)}",
                    {"limit": limit},
                )
            )
            continue
        change, ci = entry["delta"], entry.get("delta_ci")
        figures = {
            "baseline": entry["before"],
            "current": entry["after"],
            "change": change,
            "change_ci": ci,
            "limit": limit,
            "paired": comparison["paired"],
        }
        text = (
            f"{condition} worst-group accuracy {points(entry['before'])} -> {points(entry['after'])}%, "
            f"change {number(change, signed=True)} {interval_words(ci)} vs limit -{limit:g}"
        )
        out.append(
            judged(name, text, change, ci, limit, drop=True, significant=significant, comparison=comparison, figures=figures)
        )
    return out


def max_bias_follow_increase(
    current: Any, comparison: Mapping[str, Any], baseline: Any, limits: Mapping[str, float], significant: bool
) -> list[RuleVerdict]:
    """The excess bias-follow rate of modality M rose by at most X percentage points against the baseline; plain X: the
    baseline's carrier and the current one when the shortcut moved (every modality when neither audit names one)."""
    entries = comparison["bias"]["bias_follow"]
    carrier, current_carrier = comparison["bias"]["carrier"]["before"], comparison["bias"]["carrier"]["after"]
    if entries is None:
        why = as_gate_words(comparison["bias"]["lacking"].get("carrier") or ["an audit has no carrier test"])
        return [
            RuleVerdict(
                f"max_bias_follow_increase[{m if m != ALL else 'carrier'}]",
                "ERROR",
                f"no bias-follow rates to compare: {'; '.join(why)}",
                {"limit": x},
            )
            for m, x in limits.items()
        ]
    targets: dict[str, tuple[float, str]] = {}
    if ALL in limits:
        # Plain X: the modality that carried the shortcut in the baseline, and the current carrier when the shortcut
        # moved (BalGrad can move it from the caption into the image); with no carrier in either, every modality.
        whose = {
            m: note
            for m, note in ((carrier, " (the baseline's carrier)"), (current_carrier, " (the current carrier)"))
            if m in entries
        }
        if carrier in entries and current_carrier in entries and carrier == current_carrier:
            whose = {carrier: " (the carrier of both audits)"}
        whose = whose or dict.fromkeys(entries, " (neither audit names a carrier, so every modality)")
        targets.update({m: (limits[ALL], note) for m, note in whose.items()})
    targets.update({m: (x, "") for m, x in limits.items() if m != ALL})
    out = []
    for modality, (limit, note) in targets.items():
        entry = entries[modality]
        name = f"max_bias_follow_increase[{modality}]"
        if entry["delta"] is None:
            out.append(RuleVerdict(name, "ERROR", f"{modality} has no bias-follow rate in both audits", {"limit": limit}))
            continue
        change = 100 * entry["delta"]
        ci = [100 * v for v in entry["delta_ci"]] if entry.get("delta_ci") else None
        figures = {
            "modality": modality,
            "carrier": modality == carrier,
            "baseline": entry["before"],
            "current": entry["after"],
            "change_points": change,
            "change_ci_points": ci,
            "limit": limit,
            "paired": comparison["paired"],
        }
        text = (
            f"{modality}{note} bias-follow rate {pct(entry['before'])} -> {pct(entry['after'])}, "
            f"change {number(change, signed=True)} {interval_words(ci)} points vs limit +{limit:g}"
        )
        out.append(
            judged(name, text, change, ci, limit, drop=False, significant=significant, comparison=comparison, figures=figures)
        )
    return out


def _jsd_missing(audit: Mapping[str, Any], key: str, who: str) -> str:
    """Why an audit has no JSD statistic, in words a user can act on."""
    jsd = audit.get("jsd") or {}
    if not jsd.get("available"):
        return f"the {who} audit has no JSD ({jsd.get('note') or 'not available'})"
    rows = jsd.get("per_bias")
    rows = list(rows.values()) if isinstance(rows, Mapping) else rows if isinstance(rows, list) else []
    if rows and sum(int(r.get("n_wrong") or 0) for r in rows) == 0:
        return f"the {who} model makes no mistakes on this split, so there is no JSD to measure"
    if key == "mean":
        return (
            f"the {who} audit has no JSD mean: no bias value has {jsd.get('min_wrong', 'enough')} mistakes (scan with a lower "
            "--min-wrong, or use --jsd weighted)"
        )
    return f"the {who} audit has no weighted JSD mean: no bias value with mistakes has a training prior"


def max_jsd_drop(
    current: Mapping[str, Any], comparison: Any, baseline: Mapping[str, Any], limit: float, significant: bool, *, jsd: str
) -> list[RuleVerdict]:
    """The JSD statistic `jsd` (weighted mean, the default, or mean) fell by at most Z against the baseline; the JSD
    has no interval, so the plain difference decides."""
    key, name = JSD_STATISTICS[jsd], "max_jsd_drop"
    audits = {"baseline": baseline, "current": current}
    values = {
        who: (audit.get("jsd") or {}).get(key) if (audit.get("jsd") or {}).get("available") else None
        for who, audit in audits.items()
    }
    before, after = values["baseline"], values["current"]
    if before is None or after is None:
        lacking = [_jsd_missing(audits[who], key, who) for who, value in values.items() if value is None]
        return [RuleVerdict(name, "ERROR", f"JSD {jsd}: {'; '.join(lacking)}", {"limit": limit, "statistic": jsd})]
    drop = before - after
    status = "PASS" if drop <= limit else "FAIL"
    return [
        RuleVerdict(
            name,
            status,
            f"JSD {jsd} {number(before, 3)} -> {number(after, 3)}, drop {number(drop, 3, signed=True)} "
            f"{'<=' if status == 'PASS' else '>'} {limit:g} (plain difference: the JSD has no interval)",
            {"statistic": jsd, "baseline": before, "current": after, "drop": drop, "limit": limit},
        )
    ]
