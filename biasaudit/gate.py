"""`biasaudit gate`: rules over an audit (and optionally a baseline audit) -> PASS / WARN / FAIL / ERROR
verdicts -> an exit code for CI.

Rules (each gives one verdict per impairment group it applies to, with the figures behind it):
  max_gap             Gap_T of the current audit <= X, for each impairment type T (missing, noisy) it has.
  max_gap_increase    Gap_T(current) - Gap_T(baseline) <= Y: the ratchet against a stored baseline.
  min_accuracy        accuracy of condition C in the current audit >= V.
  max_jsd_drop        JSD mean(baseline) - JSD mean(current) <= Z (a lower JSD means mistakes copy the bias more).
`significant` changes max_gap_increase only: a change past Y FAILs only when its paired 95% interval
excludes zero (both audits of the same samples and seed, see compare.py); when it does not, the rule
WARNs. When the audits do not pair, the plain difference decides and the verdict says so. The JSD has
no interval, so max_jsd_drop always uses the plain difference.
ERROR: the rule cannot be evaluated on these audits (a condition or section is absent). Exit codes:
2 when any rule is in ERROR, else 1 when any FAILs, else 0 (WARN passes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from biasaudit.compare import GROUPS, compare_audits
from biasaudit.errors import InputError

STATUSES = ("PASS", "WARN", "FAIL", "ERROR")
_REQUIRED_SECTIONS = ("manifest", "conditions", "summary", "dataset")


@dataclass(frozen=True)
class GateRules:
    max_gap: float | None = None
    max_gap_increase: float | None = None
    min_accuracy: Mapping[str, float] = field(default_factory=dict)
    max_jsd_drop: float | None = None
    significant: bool = False

    def __post_init__(self) -> None:
        for name in ("max_gap", "max_gap_increase", "max_jsd_drop"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value == value):
                raise InputError(f"--{name.replace('_', '-')} is {value!r}; expected a number.")
        if self.max_gap is not None and self.max_gap < 0:
            raise InputError(f"--max-gap is {self.max_gap}; expected a gap in points >= 0.")

    def needs_baseline(self) -> list[str]:
        return [flag for flag, value in (("--max-gap-increase", self.max_gap_increase), ("--max-jsd-drop", self.max_jsd_drop))
                if value is not None]

    def empty(self) -> bool:
        return self.max_gap is None and self.max_gap_increase is None and not self.min_accuracy and self.max_jsd_drop is None


@dataclass(frozen=True)
class RuleVerdict:
    rule: str
    status: str
    message: str
    figures: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_audit_shape(audit: Mapping[str, Any], *, source: str) -> None:
    """The sections the gate reads; read_audit has already checked the schema and version."""
    missing = [key for key in _REQUIRED_SECTIONS if key not in audit]
    if missing:
        raise InputError(f"Audit file {source} lacks the {', '.join(missing)} section(s) a scan writes; re-run the scan.")


def parse_min_accuracy(items: list[str]) -> dict[str, float]:
    """`CONDITION=VALUE` (percent) items of --min-accuracy."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name or number is None:
            raise InputError(f"--min-accuracy {item!r} is not CONDITION=PERCENT (e.g. full=90 or missing:image=40).")
        if not 0 <= number <= 100:
            raise InputError(f"--min-accuracy {item!r}: {number:g} is not a percentage between 0 and 100.")
        out[name] = number
    return out


def _points(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _interval(ci: Any) -> str:
    return f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "no interval"


def _groups(summary: Mapping[str, Any], rule: str, limit: float) -> tuple[list[str], list[RuleVerdict]]:
    """The impairment types with a Gap in this summary; an ERROR verdict when there is none."""
    present = [group for group in GROUPS if summary.get(group)]
    if present:
        return present, []
    return [], [RuleVerdict(rule, "ERROR", f"no Gap to check: the audit has neither a missing nor a noisy pair of conditions "
                                           f"(scan with --conditions missing,noisy)", {"limit": limit})]


def _max_gap(current: Mapping[str, Any], limit: float) -> list[RuleVerdict]:
    groups, out = _groups(current["summary"], "max_gap", limit)
    for group in groups:
        section = current["summary"][group]
        name = f"max_gap[{group}]"
        gap = section["gap"]
        status = "PASS" if gap <= limit else "FAIL"
        out.append(RuleVerdict(name, status, f"{group} Gap {gap:.1f} points {'<=' if status == 'PASS' else '>'} {limit:g}",
                               {"gap": gap, "gap_ci": section.get("gap_ci"), "limit": limit}))
    return out


def _gap_increase(comparison: Mapping[str, Any], limit: float, *, significant: bool) -> list[RuleVerdict]:
    paired = comparison["paired"]
    groups, out = _groups(comparison["summary"], "max_gap_increase", limit)
    for group in groups:
        name = f"max_gap_increase[{group}]"
        gap = comparison["summary"][group]["gap"]
        change, ci = gap["delta"], gap.get("delta_ci")
        figures = {"baseline": gap["before"], "current": gap["after"], "change": change, "change_ci": ci, "limit": limit,
                   "paired": paired}
        text = f"{group} Gap {_points(gap['before'])} -> {_points(gap['after'])}, change {change:+.1f} {_interval(ci)} vs limit +{limit:g}"
        if change <= limit:
            out.append(RuleVerdict(name, "PASS", text, figures))
        elif not significant:
            out.append(RuleVerdict(name, "FAIL", text, figures))
        elif ci is None:
            out.append(RuleVerdict(name, "FAIL", f"{text}; the audits do not pair ({comparison['unpaired_reason']}), so the plain "
                                                 "difference is used", figures))
        elif ci[0] > 0:
            out.append(RuleVerdict(name, "FAIL", f"{text}; the interval excludes zero", figures))
        else:
            out.append(RuleVerdict(name, "WARN", f"{text}; the interval includes zero, so --significant does not fail it", figures))
    return out


def _min_accuracy(current: Mapping[str, Any], minimums: Mapping[str, float]) -> list[RuleVerdict]:
    rows = {row["name"]: row for row in current["conditions"]}
    out = []
    for condition, minimum in minimums.items():
        name = f"min_accuracy[{condition}]"
        row = rows.get(condition)
        if row is None:
            out.append(RuleVerdict(name, "ERROR", f"the audit has no condition {condition!r}. Available: {', '.join(rows)}",
                                   {"minimum": minimum}))
            continue
        accuracy = row["accuracy"]
        status = "PASS" if accuracy is not None and accuracy >= minimum else "FAIL"
        out.append(RuleVerdict(name, status, f"{condition} accuracy {_points(accuracy)}% {'>=' if status == 'PASS' else '<'} {minimum:g}%",
                               {"accuracy": accuracy, "accuracy_ci": row.get("accuracy_ci"), "minimum": minimum}))
    return out


def _jsd_drop(comparison: Mapping[str, Any], limit: float) -> list[RuleVerdict]:
    jsd = comparison.get("jsd")
    name = "max_jsd_drop"
    means = {"baseline": (jsd or {}).get("mean", {}).get("before"), "current": (jsd or {}).get("mean", {}).get("after")}
    lacking = [who for who, value in means.items() if value is None]
    if lacking:
        return [RuleVerdict(name, "ERROR", f"the {' and the '.join(lacking)} audit has no JSD mean (no bias values, or no bias value "
                                           "with enough mistakes: scan again with a lower --min-wrong)", {"limit": limit})]
    before, after = jsd["mean"]["before"], jsd["mean"]["after"]
    drop = before - after
    status = "PASS" if drop <= limit else "FAIL"
    return [RuleVerdict(name, status, f"JSD mean {before:.3f} -> {after:.3f}, drop {drop:+.3f} {'<=' if status == 'PASS' else '>'} {limit:g} "
                                      "(plain difference: the JSD has no interval)",
                        {"baseline": before, "current": after, "drop": drop, "limit": limit})]


def evaluate_gate(current: Mapping[str, Any], rules: GateRules, *, baseline: Mapping[str, Any] | None = None,
                  current_name: str = "current", baseline_name: str = "baseline") -> dict[str, Any]:
    """Every rule's verdicts and the overall status and exit code; InputError for unusable rules or audits."""
    if rules.empty():
        raise InputError("No gate rule was given; use --max-gap, --max-gap-increase with --baseline, --min-accuracy or --max-jsd-drop.")
    if baseline is None and rules.needs_baseline():
        needs = rules.needs_baseline()
        raise InputError(f"{' and '.join(needs)} {'compares' if len(needs) == 1 else 'compare'} against a stored audit; "
                         "give it with --baseline BASE.json.")
    verdicts: list[RuleVerdict] = []
    if rules.max_gap is not None:
        verdicts += _max_gap(current, rules.max_gap)
    if rules.min_accuracy:
        verdicts += _min_accuracy(current, rules.min_accuracy)
    comparison = None
    if baseline is not None and rules.needs_baseline():
        try:
            comparison = compare_audits(baseline, current)
        except InputError as exc:
            raise InputError(f"{baseline_name} vs {current_name}: {exc}") from exc
        if rules.max_gap_increase is not None:
            verdicts += _gap_increase(comparison, rules.max_gap_increase, significant=rules.significant)
        if rules.max_jsd_drop is not None:
            verdicts += _jsd_drop(comparison, rules.max_jsd_drop)
    statuses = {v.status for v in verdicts}
    overall = "ERROR" if "ERROR" in statuses else "FAIL" if "FAIL" in statuses else "WARN" if "WARN" in statuses else "PASS"
    exit_code = {"ERROR": 2, "FAIL": 1}.get(overall, 0)
    return {"schema": "biasaudit.gate", "schema_version": 1, "status": overall, "exit_code": exit_code,
            "current": current_name, "baseline": baseline_name if baseline is not None else None,
            "paired": comparison["paired"] if comparison else None,
            "unpaired_reason": comparison["unpaired_reason"] if comparison else None,
            "rules": [v.to_dict() for v in verdicts]}
