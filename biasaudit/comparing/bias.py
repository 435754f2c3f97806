"""The bias measures of a comparison (methods.md section 9): carrier, bias-follow rates, worst-group and bias-balanced
accuracy, OOD accuracy, the ceilings and the interaction share before and after, with paired intervals from each audit's
bootstrap.derived replicates; and why a measure does not compare (a section lacking, groups formed differently, bias
values that are not the same in both audits)."""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from biasaudit.diagnostics.accuracy import percentile_interval
from biasaudit.comparing.pairing import Pairing, derived_replicates


def delta(before: float | None, after: float | None) -> float | None:
    """after - before; None when either is missing."""
    return None if before is None or after is None else after - before


def favoured_rule_of(audit: Mapping[str, Any]) -> str:
    """How an audit read the classes a bias value favours: the fraction of the favoured-class rule, or the single most
    frequent class for audits written before the rule (their config does not record a fraction)."""
    fraction = audit["manifest"].get("config", {}).get("favoured_fraction")
    if fraction is None:
        return "the single most frequent class per bias value (an audit written before the favoured-class rule)"
    return f"favoured classes at fraction {fraction:g}"


def favoured_rule_difference(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Aligned, conflicting, worst-group and bias-follow figures count other samples under another favoured-class rule, so
    they are not paired (the reason, for `lacking`); accuracy, the Gap and JSD do not depend on the rule and still are."""
    rules = [favoured_rule_of(audit) for audit in (before, after)]
    if rules[0] == rules[1]:
        return []
    return [
        f"the audits read bias values differently (before: {rules[0]}; after: {rules[1]}), so their aligned, conflicting, "
        "worst-group and bias-follow figures count different samples; scan both with the same --favoured-fraction and biasaudit"
    ]


def _ran(audit: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    section = audit.get(key)
    return section if isinstance(section, Mapping) and section.get("available", True) else None


def _change(
    before_value: float | None,
    after_value: float | None,
    key: str,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    pairing: Pairing,
) -> dict[str, Any]:
    """before, after, delta and the paired interval of the delta from the derived replicates (None when unpaired
    or when either audit lacks them)."""
    entry: dict[str, Any] = {
        "before": before_value,
        "after": after_value,
        "delta": delta(before_value, after_value),
        "delta_ci": None,
    }
    counts = pairing.counts
    if counts is not None and entry["delta"] is not None:
        b = derived_replicates(before, key, counts[0].replicates, "before")
        a = derived_replicates(after, key, counts[1].replicates, "after")
        if b is not None and a is not None:
            entry["delta_ci"] = percentile_interval(a - b)
    return entry


def _group_measure(before: Mapping[str, Any], after: Mapping[str, Any], pairing: Pairing, measure: str) -> dict[str, Any] | None:
    b, a = ((_ran(audit, "groups") or {}).get("conditions") for audit in (before, after))
    if not b or not a:
        return None
    out = {
        cond: _change(b[cond].get(measure), a[cond].get(measure), f"{measure}:{cond}", before, after, pairing)
        for cond in b
        if cond in a
    }
    if measure == "worst_group":  # 0% -> 0% reads as no change when eleven groups at 0% became one
        for cond, entry in out.items():
            tied = {"before": b[cond].get("groups_at_minimum"), "after": a[cond].get("groups_at_minimum")}
            if any(v is not None for v in tied.values()):  # audits before the count have none
                entry["groups_at_minimum"] = tied
    return out


def _ceilings(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any] | None:
    b, a = _ran(before, "ceilings") or {}, _ran(after, "ceilings") or {}
    if not b and not a:
        return None
    names = list(dict.fromkeys([*(b.get("modalities") or {}), *(a.get("modalities") or {})]))

    def side(section: Mapping[str, Any], m: str, key: str) -> Any:
        return ((section.get("modalities") or {}).get(m) or {}).get(key)

    return {
        "modalities": {
            m: {
                key: {"before": side(b, m, key), "after": side(a, m, key)}
                for key in ("ceiling", "alone", "utilisation", "caveat")
            }
            for m in names
        },
        **{key: {"before": b.get(key), "after": a.get(key)} for key in ("implied_gap", "observed_gap", "large_gap_expected")},
    }


def _why_not(audit: Mapping[str, Any], key: str, who: str) -> str:
    section = audit.get(key)
    if isinstance(section, Mapping) and section.get("note"):
        return f"the {who} audit's {key} section is unavailable: {section['note']}"
    again = "written by an older biasaudit: scan it again" if key == "groups" else "scan it again with carrier in --conditions"
    return f"the {who} audit has no {key} section ({again})"


def _different_groups(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Worst-group figures pair only when both audits grouped alike (same grouping, min_group and bias source)."""
    b, a = _ran(before, "groups"), _ran(after, "groups")
    if not b or not a:
        return []
    return [
        f"the audits grouped differently ({key} {b.get(key)!r} vs {a.get(key)!r})"
        for key in ("grouping", "min_group", "bias_source")
        if b.get(key) != a.get(key)
    ]


def _discovered_bias(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """k-means bias values are clusters of each model's own embeddings: groups and bias-follow rates of two models
    measure different bias values and do not compare."""
    sources = [((_ran(audit, "groups") or _ran(audit, "carrier") or {}).get("bias_source")) for audit in (before, after)]
    if "kmeans" in sources:
        return [
            "bias values were discovered by k-means on each model's own embeddings, so the two audits' groups and "
            "bias-follow rates measure different bias values"
        ]
    return []


def compare_bias(before: Mapping[str, Any], after: Mapping[str, Any], pairing: Pairing) -> dict[str, Any]:
    """Carrier, bias-follow rates, worst-group / bias-balanced and OOD accuracy before and after, with paired intervals
    from each audit's bootstrap.derived replicates. An entry is None when either audit lacks its section (e.g. audits
    written before these measures existed); `lacking` says which section each audit lacks."""
    carriers = [_ran(audit, "carrier") for audit in (before, after)]
    follow = None
    b_carrier, a_carrier = carriers
    if b_carrier and a_carrier:
        rates = [
            {m: (v.get("bias_swap") or {}).get("excess_follow_rate") for m, v in (c.get("modalities") or {}).items()}
            for c in (b_carrier, a_carrier)
        ]
        follow = {
            m: _change(rates[0][m], rates[1][m], f"bias_follow:{m}", before, after, pairing) for m in rates[0] if m in rates[1]
        }
    shifts = [((_ran(audit, "groups") or {}).get("shift") or {}).get("ood") for audit in (before, after)]
    ood = None
    if any(shifts):
        full_b, full_a = before["summary"]["full"]["accuracy"], after["summary"]["full"]["accuracy"]
        ood = {"before": full_b, "after": full_a, "delta": delta(full_b, full_a), "delta_ci": pairing.delta_interval("full")}
    lacking = {
        key: [_why_not(audit, key, who) for who, audit in (("before", before), ("after", after)) if not _ran(audit, key)]
        for key in ("groups", "carrier")
    }
    # Worst-group figures that cover bias-aligned groups only cannot show a change of bias: no entry, and why.
    blind = [
        f"the {who} audit's worst-group accuracy cannot see the bias: {(_ran(audit, 'groups') or {}).get('blind')}"
        for who, audit in (("before", before), ("after", after))
        if (_ran(audit, "groups") or {}).get("blind")
    ]
    different = _different_groups(before, after)
    lacking["groups"] += blind + different
    # Bias values that are not the same in both audits (k-means clusters of each model, another favoured-class rule).
    incomparable = _discovered_bias(before, after) + favoured_rule_difference(before, after)
    for key in ("groups", "carrier"):
        lacking[key] += incomparable
    return {
        "carrier": {"before": (carriers[0] or {}).get("carrier"), "after": (carriers[1] or {}).get("carrier")},
        "bias_follow": None if incomparable else follow,
        "worst_group": None if blind or different or incomparable else _group_measure(before, after, pairing, "worst_group"),
        "bias_balanced": None if blind or different or incomparable else _group_measure(before, after, pairing, "bias_balanced"),
        "ood": ood,
        "ceilings": _ceilings(before, after),
        "interaction": _interaction(before, after, pairing),
        "lacking": {key: why for key, why in lacking.items() if why},
    }


def _interaction(before: Mapping[str, Any], after: Mapping[str, Any], pairing: Pairing) -> dict[str, Any] | None:
    """The change of the interaction share, paired through its replicates (bootstrap.derived) when both audits measured it."""
    b, a = _ran(before, "interaction"), _ran(after, "interaction")
    if not b or not a:
        return None
    return _change(b.get("interaction_share"), a.get("interaction_share"), "interaction_share", before, after, pairing)
