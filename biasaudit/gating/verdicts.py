"""What every gate rule returns: RuleVerdicts (PASS / WARN / FAIL / ERROR with the figures behind them), and the
judgements the rule families share: a baseline rule's change against its limit (with `significant`), and a floor on a
per-condition figure."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any
from collections.abc import Mapping

from biasaudit.verdict.words import interval, number

STATUSES = ("PASS", "WARN", "FAIL", "ERROR")


@dataclass(frozen=True)
class RuleVerdict:
    rule: str
    status: str
    message: str
    figures: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def points(value: float | None) -> str:
    return number(value)


def interval_words(ci: Any) -> str:
    return interval(ci) or "no interval"


def as_gate_words(reasons: list[str]) -> list[str]:
    """compare speaks of before/after audits; the gate of the baseline and the current one."""
    return [r.replace("the before audit", "the baseline audit").replace("the after audit", "the current audit") for r in reasons]


def judged(
    name: str,
    text: str,
    change: float,
    ci: Any,
    limit: float,
    *,
    drop: bool,
    significant: bool,
    comparison: Mapping[str, Any],
    figures: dict[str, Any],
) -> RuleVerdict:
    """PASS within the limit; past it FAIL, or with `significant` FAIL only when the whole paired interval lies
    beyond the limit (else WARN). Without an interval the plain difference decides, and the message says so."""
    beyond = change < -limit if drop else change > limit
    if not beyond:
        return RuleVerdict(name, "PASS", text, figures)
    if not significant:
        return RuleVerdict(name, "FAIL", text, figures)
    if not comparison["paired"]:
        return RuleVerdict(
            name,
            "FAIL",
            f"{text}; the audits do not pair ({comparison['unpaired_reason']}), so the plain difference is used",
            figures,
        )
    if not ci:
        return RuleVerdict(
            name,
            "FAIL",
            f"{text}; this measure has no paired interval (an audit kept no replicates of it), so the plain difference is used",
            figures,
        )
    if (ci[1] < -limit) if drop else (ci[0] > limit):
        return RuleVerdict(name, "FAIL", f"{text}; the whole interval lies beyond the limit", figures)
    return RuleVerdict(name, "WARN", f"{text}; the interval reaches within the limit, so --significant does not fail it", figures)


def minimums_met(
    rule: str, what: str, rows: Mapping[str, Mapping[str, Any]], why: str | None, minimums: Mapping[str, float], *, null_note: str
) -> list[RuleVerdict]:
    """A floor per condition (min_accuracy, min_worst_group): `rows` holds each condition's {"value", "ci"}, `why` says
    why the audit has none at all, `null_note` why a condition's value is null. The figures are named after the rule
    (accuracy, worst_group)."""
    out = []
    for condition, minimum in minimums.items():
        name = f"{rule}[{condition}]"
        if why:
            out.append(RuleVerdict(name, "ERROR", why, {"minimum": minimum}))
            continue
        row = rows.get(condition)
        if row is None:
            out.append(
                RuleVerdict(
                    name,
                    "ERROR",
                    f"the audit has no {what} for condition {condition!r}. Available: {', '.join(rows)}",
                    {"minimum": minimum},
                )
            )
            continue
        value = row["value"]
        if value is None:
            out.append(
                RuleVerdict(
                    name, "ERROR", f"the audit has no {what} for condition {condition!r}: {null_note}", {"minimum": minimum}
                )
            )
            continue
        status = "PASS" if value >= minimum else "FAIL"
        out.append(
            RuleVerdict(
                name,
                status,
                f"{condition} {what} {points(value)}% {'>=' if status == 'PASS' else '<'} {minimum:g}%",
                {rule.removeprefix("min_"): value, f"{rule.removeprefix('min_')}_ci": row["ci"], "minimum": minimum},
            )
        )
    return out
