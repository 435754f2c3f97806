"""Before/after comparison of two audits of the same split, conditions and seed.

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

from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping

import numpy as np

from biasaudit.errors import DataError, InputError
from biasaudit.data.fingerprint import fingerprint_difference
from biasaudit.diagnostics.accuracy import BootstrapCounts, percentile_interval
from biasaudit.verdict import compare_sentences, compare_verdict

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


def generator_of(audit: Mapping[str, Any]) -> Mapping[str, Any]:
    """The random generator an audit drew with; audits that do not name one are version 1 (numpy per sample)."""
    return audit["manifest"].get("randomness") or {"name": "numpy-default_rng-per-sample", "version": 1}


def pair_replicates(before: Mapping[str, Any], after: Mapping[str, Any]) -> Pairing:
    """Pair the bootstrap replicates of two audits only when they drew the same weights for the same samples."""

    def unpaired(reason: str) -> Pairing:
        return Pairing(before=None, after=None, reason=reason)

    for key, what in (("bootstrap", "bootstrap replicates"), ("samples", "sample fingerprints")):
        lacking = _lacking(before, after, key, what)
        if lacking is not None:
            return unpaired(lacking)
    generators = [generator_of(audit) for audit in (before, after)]
    if generators[0] != generators[1]:
        return unpaired(
            "the audits drew their random numbers with different generators "
            f"({generators[0]['name']} v{generators[0]['version']} vs {generators[1]['name']} v{generators[1]['version']})"
        )
    b, a = (
        BootstrapCounts.from_dict(audit["bootstrap"], conditions=[row["name"] for row in audit["conditions"]])
        for audit in (before, after)
    )
    if b.seed != a.seed:
        return unpaired(f"different bootstrap seeds ({b.seed} vs {a.seed})")
    if b.replicates != a.replicates:
        return unpaired(f"different replicate counts ({b.replicates} vs {a.replicates})")
    if dict(b.draws) != dict(a.draws):
        # Replicates of R draws weigh R draws picked with replacement: they pair only with replicates that did the same.
        return unpaired(
            f"different draws of the random conditions ({max(b.draws.values(), default=1)} vs {max(a.draws.values(), default=1)})"
        )
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
        raise InputError(
            f"The two audits ran different conditions ({', '.join(only)} in one only); a before/after comparison needs the same ones."
        )
    changed = [name for name, definition in definitions[0].items() if definitions[1][name] != definition]
    if changed:
        details = "; ".join(f"{name}: {definitions[0][name][2]} vs {definitions[1][name][2]}" for name in changed)
        raise InputError(
            f"The two audits impaired differently under the same condition names ({details}); "
            "a before/after comparison needs the same impairments (check --mute)."
        )


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
        conditions.append(
            {
                "name": row["name"],
                "before": row["accuracy"],
                "after": other["accuracy"],
                "delta": _delta(row["accuracy"], other["accuracy"]),
                "before_ci": row["accuracy_ci"],
                "after_ci": other["accuracy_ci"],
                "flip_before": row["flip_rate"],
                "flip_after": other["flip_rate"],
                "delta_ci": pairing.delta_interval(row["name"]),
            }
        )
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


def group_replicates(audit: Mapping[str, Any], counts: BootstrapCounts, group: str) -> np.ndarray:
    """[modalities, replicates] accuracies of a group's conditions, in the order of its summary scores."""
    by_modality = {c["modality"]: c["name"] for c in audit["conditions"] if c["group"] == group}
    return np.stack([counts.accuracy(by_modality[m]) for m in audit["summary"][group]["scores"]])


def _group_change_intervals(before: Mapping[str, Any], after: Mapping[str, Any], pairing: Pairing, group: str) -> dict[str, Any]:
    """Intervals of Avg_after - Avg_before and Gap_after - Gap_before: both recomputed on every paired replicate
    (methods.md section 2; Gap = max - min over modalities, which is |A_a - A_b| for two)."""
    if not pairing.paired:
        return {"avg": None, "gap": None}
    b, a = group_replicates(before, pairing.before, group), group_replicates(after, pairing.after, group)
    avg_change = a.mean(axis=0) - b.mean(axis=0)
    gap_change = (a.max(axis=0) - a.min(axis=0)) - (b.max(axis=0) - b.min(axis=0))
    return {"avg": percentile_interval(avg_change), "gap": percentile_interval(gap_change)}


# --- bias measures (methods.md section 9) ---------------------------------------------------------------


def _ran(audit: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    section = audit.get(key)
    return section if isinstance(section, Mapping) and section.get("available", True) else None


def derived_replicates(audit: Mapping[str, Any], key: str, replicates: int, who: str) -> np.ndarray | None:
    """One derived measure per bootstrap replicate (null = NaN); None when the audit did not keep it."""
    values = ((audit.get("bootstrap") or {}).get("derived") or {}).get(key)
    if values is None:
        return None
    if (
        not isinstance(values, list)
        or len(values) != replicates
        or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values)
    ):
        raise DataError(
            f"The {who} audit's bootstrap.derived[{key!r}] is not a list of {replicates} numbers or nulls, "
            "one per replicate; it is damaged."
        )
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


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
    entry = {"before": before_value, "after": after_value, "delta": _delta(before_value, after_value), "delta_ci": None}
    if pairing.paired and entry["delta"] is not None:
        b = derived_replicates(before, key, pairing.before.replicates, "before")
        a = derived_replicates(after, key, pairing.after.replicates, "after")
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
    side = lambda section, m, key: ((section.get("modalities") or {}).get(m) or {}).get(key)  # noqa: E731
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
    if all(carriers):
        rates = [
            {m: (v.get("bias_swap") or {}).get("excess_follow_rate") for m, v in (c.get("modalities") or {}).items()}
            for c in carriers
        ]
        follow = {
            m: _change(rates[0][m], rates[1][m], f"bias_follow:{m}", before, after, pairing) for m in rates[0] if m in rates[1]
        }
    shifts = [((_ran(audit, "groups") or {}).get("shift") or {}).get("ood") for audit in (before, after)]
    ood = None
    if any(shifts):
        full_b, full_a = before["summary"]["full"]["accuracy"], after["summary"]["full"]["accuracy"]
        ood = {"before": full_b, "after": full_a, "delta": _delta(full_b, full_a), "delta_ci": pairing.delta_interval("full")}
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
