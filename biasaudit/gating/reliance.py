"""Reliance rules: how unevenly the model relies on its inputs (the missing-modality and noisy-input Gaps) and plain
accuracy. The Gap grows when a model uses the more informative modality better, so a Gap ratchet can block a
de-biased model (docs/gating.md, "When a Gap ratchet misleads"); gate on the bias rules first.

Each function is one rule's evaluator, registered in biasaudit.gating.registry:
evaluate(current, comparison, baseline, limits, significant) -> [RuleVerdict, ...].
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from biasaudit.gating.limits import ALL, gap_groups
from biasaudit.gating.verdicts import RuleVerdict, interval_words, judged, minimums_met, points
from biasaudit.verdict.words import number


def _expand_groups(
    summary: Mapping[str, Any], limits: Mapping[str, float], rule: str
) -> tuple[list[tuple[str, float]], list[RuleVerdict]]:
    """(group, limit) pairs: ALL means every impairment type with a Gap in this summary; a named one must exist."""
    present = [group for group in gap_groups() if summary.get(group)]
    wanted = {**(dict.fromkeys(present, limits[ALL]) if ALL in limits else {}), **{g: x for g, x in limits.items() if g != ALL}}
    errors = [
        RuleVerdict(
            f"{rule}[{g}]",
            "ERROR",
            f"the audit has no {g} Gap (scan with --conditions {g} or a list that includes it)",
            {"limit": x},
        )
        for g, x in wanted.items()
        if g not in present
    ]
    if not wanted:
        errors.append(
            RuleVerdict(
                rule,
                "ERROR",
                "no Gap to check: the audit has neither a missing nor a noisy pair of conditions "
                "(scan with --conditions missing,noisy)",
                {"limit": limits[ALL]},
            )
        )
    return [(g, x) for g, x in wanted.items() if g in present], errors


def max_gap(
    current: Mapping[str, Any], comparison: Any, baseline: Any, limits: Mapping[str, float], significant: bool
) -> list[RuleVerdict]:
    """Gap_T of the current audit <= X, per impairment type T (plain X: every T it has)."""
    pairs, out = _expand_groups(current["summary"], limits, "max_gap")
    for group, limit in pairs:
        section = current["summary"][group]
        gap = section["gap"]
        status = "PASS" if gap <= limit else "FAIL"
        out.append(
            RuleVerdict(
                f"max_gap[{group}]",
                status,
                f"{group} Gap {points(gap)} points {'<=' if status == 'PASS' else '>'} {limit:g}",
                {"gap": gap, "gap_ci": section.get("gap_ci"), "limit": limit},
            )
        )
    return out


def max_gap_increase(
    current: Any, comparison: Mapping[str, Any], baseline: Any, limits: Mapping[str, float], significant: bool
) -> list[RuleVerdict]:
    """Gap_T(current) - Gap_T(baseline) <= Y: the ratchet (plain Y: every T)."""
    pairs, out = _expand_groups(comparison["summary"], limits, "max_gap_increase")
    for group, limit in pairs:
        gap = comparison["summary"][group]["gap"]
        change, ci = gap["delta"], gap.get("delta_ci")
        figures = {
            "baseline": gap["before"],
            "current": gap["after"],
            "change": change,
            "change_ci": ci,
            "limit": limit,
            "paired": comparison["paired"],
        }
        text = (
            f"{group} Gap {points(gap['before'])} -> {points(gap['after'])}, change {number(change, signed=True)} "
            f"{interval_words(ci)} vs limit +{limit:g}"
        )
        out.append(
            judged(
                f"max_gap_increase[{group}]",
                text,
                change,
                ci,
                limit,
                drop=False,
                significant=significant,
                comparison=comparison,
                figures=figures,
            )
        )
    return out


def min_accuracy(
    current: Mapping[str, Any], comparison: Any, baseline: Any, limits: Mapping[str, float], significant: bool
) -> list[RuleVerdict]:
    """The accuracy of condition C in the current audit >= V percent."""
    rows = {row["name"]: {"value": row["accuracy"], "ci": row.get("accuracy_ci")} for row in current["conditions"]}
    return minimums_met("min_accuracy", "accuracy", rows, None, limits, null_note="the audit holds null")
