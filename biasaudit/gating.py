"""`biasaudit gate`: rules over an audit (and optionally a baseline audit) -> PASS / WARN / FAIL / ERROR
verdicts -> an exit code for CI.

Bias rules (recommended first: they measure the shortcut, methods.md section 9):
  min_worst_group           worst-group accuracy of condition C in the current audit >= P percent.
  max_worst_group_drop      worst-group accuracy of C (plain X: full) fell by at most X points against the baseline.
  max_bias_follow_increase  excess bias-follow rate of modality M rose by at most X percentage points against the
                            baseline; plain X: the baseline's carrier (every modality when it has none).
  max_jsd_drop              JSD (`jsd`: weighted mean, the default, or mean) fell by at most Z against the baseline.
Reliance rules (the Gap grows when a model uses the more informative modality better, so a Gap ratchet
can block a de-biased model; see the README):
  max_gap                   Gap_T of the current audit <= X, per impairment type T (plain X: every T it has).
  max_gap_increase          Gap_T(current) - Gap_T(baseline) <= Y: the ratchet (plain Y: every T).
  min_accuracy              accuracy of condition C in the current audit >= V.
`significant`: a baseline rule's change past its limit FAILs only when its whole paired 95% interval lies
beyond the limit (lo > limit for an increase, hi < -limit for a drop); otherwise it WARNs. It applies to
every rule with a paired interval (Gap, worst-group, bias-follow). When the audits do not pair, or a
measure has no replicates, the plain difference decides and the verdict says so; the JSD has no interval.
ERROR: the rule cannot be evaluated on these audits (a condition or section is absent). Exit codes:
2 when any rule is in ERROR, else 1 when any FAILs, else 0 (WARN passes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from biasaudit.arguments import check_fields, refuse_unknown_fields
from biasaudit.comparing import GROUPS, compare_audits
from biasaudit.errors import InputError
from biasaudit.gate_limits import ALL, JSD_STATISTICS, parse_limits, parse_statistic
from biasaudit.verdict.words import interval, number, pct

STATUSES = ("PASS", "WARN", "FAIL", "ERROR")
_REQUIRED_SECTIONS = ("manifest", "conditions", "summary", "dataset")
BASELINE_RULES = ("max_worst_group_drop", "max_bias_follow_increase", "max_gap_increase", "max_jsd_drop")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class GateRules:
    """Limits per key (impairment group, condition or modality); a plain number is accepted and means the
    option's default target (ALL, or `full` for max_worst_group_drop). `labels` names each option in errors
    (the command-line flag, or the config file and key); an option without a label was given from Python: its
    type is checked strictly (a number or a mapping of numbers, never the command line's strings) and its errors
    name the keyword."""

    max_gap: Mapping[str, float] | float | None = None
    max_gap_increase: Mapping[str, float] | float | None = None
    min_accuracy: Mapping[str, float] = field(default_factory=dict)
    min_worst_group: Mapping[str, float] = field(default_factory=dict)
    max_worst_group_drop: Mapping[str, float] | float | None = None
    max_bias_follow_increase: Mapping[str, float] | float | None = None
    max_jsd_drop: float | None = None
    jsd: str = "weighted"
    significant: bool = False
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __new__(cls, *args: Any, **kwargs: Any) -> "GateRules":
        refuse_unknown_fields(cls, args, kwargs, where="ba.GateRules")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        check_fields(self, where="ba.GateRules", skip=self.labels if isinstance(self.labels, Mapping) else ())
        for name in ("max_gap", "max_gap_increase", "min_accuracy", "min_worst_group", "max_worst_group_drop",
                     "max_bias_follow_increase"):
            object.__setattr__(self, name, parse_limits(name, getattr(self, name), label=self._label(name)) or
                               ({} if name.startswith("min_") else None))
        value = self.max_jsd_drop
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value):
            raise InputError(f"{self._label('max_jsd_drop')} is {value!r}; expected a number.")
        if value is not None and (value < 0 or value == float("inf")):
            raise InputError(f"{self._label('max_jsd_drop')} is {value!r}; expected a finite drop >= 0 (a negative limit fails identical audits, an infinite one never fails).")
        object.__setattr__(self, "jsd", parse_statistic(self.jsd, label=self._label("jsd")))

    def _label(self, name: str) -> str:
        return self.labels.get(name, name)

    @property
    def comparing(self) -> list[str]:
        """The rules given that compare against a baseline audit, as their labels name them."""
        return [self._label(name) for name in BASELINE_RULES if getattr(self, name) is not None]

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, name) for name in ("max_gap", "min_accuracy", "min_worst_group", *BASELINE_RULES)) \
            and self.max_jsd_drop is None


def gate_rules(values: Mapping[str, Any], *, sources: Mapping[str, str] | None = None) -> GateRules:
    """GateRules from resolved settings (command-line strings or config-file numbers and tables: one validation
    path for both); an error names the flag, or the file and key the bad value came from."""
    sources = sources or {}
    labels = {name: _flag(name) if sources.get(name, "default").startswith(("command line", "default")) else f"{sources[name]} {name}"
              for name in values}
    fields = ("max_gap", "max_gap_increase", "min_accuracy", "min_worst_group", "max_worst_group_drop",
              "max_bias_follow_increase", "max_jsd_drop", "jsd", "significant")
    given = {name: values[name] for name in fields if name in values and values[name] is not None}
    return GateRules(**given, labels=labels)


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
    return parse_limits("min_accuracy", items) or {}


def _points(value: float | None) -> str:
    return number(value)


def _interval(ci: Any) -> str:
    return interval(ci) or "no interval"


def _judged(name: str, text: str, change: float, ci: Any, limit: float, *, drop: bool, significant: bool,
            comparison: Mapping[str, Any], figures: dict[str, Any]) -> RuleVerdict:
    """PASS within the limit; past it FAIL, or with `significant` FAIL only when the whole paired interval lies
    beyond the limit (else WARN). Without an interval the plain difference decides, and the message says so."""
    beyond = change < -limit if drop else change > limit
    if not beyond:
        return RuleVerdict(name, "PASS", text, figures)
    if not significant:
        return RuleVerdict(name, "FAIL", text, figures)
    if not comparison["paired"]:
        return RuleVerdict(name, "FAIL", f"{text}; the audits do not pair ({comparison['unpaired_reason']}), so the plain "
                                         "difference is used", figures)
    if not ci:
        return RuleVerdict(name, "FAIL", f"{text}; this measure has no paired interval (an audit kept no replicates of it), so the "
                                         "plain difference is used", figures)
    if (ci[1] < -limit) if drop else (ci[0] > limit):
        return RuleVerdict(name, "FAIL", f"{text}; the whole interval lies beyond the limit", figures)
    return RuleVerdict(name, "WARN", f"{text}; the interval reaches within the limit, so --significant does not fail it", figures)


def _expand_groups(summary: Mapping[str, Any], limits: Mapping[str, float], rule: str) -> tuple[list[tuple[str, float]], list[RuleVerdict]]:
    """(group, limit) pairs: ALL means every impairment type with a Gap in this summary; a named one must exist."""
    present = [group for group in GROUPS if summary.get(group)]
    wanted = {**({g: limits[ALL] for g in present} if ALL in limits else {}), **{g: x for g, x in limits.items() if g != ALL}}
    errors = [RuleVerdict(f"{rule}[{g}]", "ERROR", f"the audit has no {g} Gap (scan with --conditions {g} or a list that includes it)",
                          {"limit": x}) for g, x in wanted.items() if g not in present]
    if not wanted:
        errors.append(RuleVerdict(rule, "ERROR", "no Gap to check: the audit has neither a missing nor a noisy pair of conditions "
                                                 "(scan with --conditions missing,noisy)", {"limit": limits[ALL]}))
    return [(g, x) for g, x in wanted.items() if g in present], errors


def _max_gap(current: Mapping[str, Any], limits: Mapping[str, float]) -> list[RuleVerdict]:
    pairs, out = _expand_groups(current["summary"], limits, "max_gap")
    for group, limit in pairs:
        section = current["summary"][group]
        gap = section["gap"]
        status = "PASS" if gap <= limit else "FAIL"
        out.append(RuleVerdict(f"max_gap[{group}]", status, f"{group} Gap {_points(gap)} points {'<=' if status == 'PASS' else '>'} {limit:g}",
                               {"gap": gap, "gap_ci": section.get("gap_ci"), "limit": limit}))
    return out


def _gap_increase(comparison: Mapping[str, Any], limits: Mapping[str, float], *, significant: bool) -> list[RuleVerdict]:
    pairs, out = _expand_groups(comparison["summary"], limits, "max_gap_increase")
    for group, limit in pairs:
        gap = comparison["summary"][group]["gap"]
        change, ci = gap["delta"], gap.get("delta_ci")
        figures = {"baseline": gap["before"], "current": gap["after"], "change": change, "change_ci": ci, "limit": limit,
                   "paired": comparison["paired"]}
        text = f"{group} Gap {_points(gap['before'])} -> {_points(gap['after'])}, change {number(change, signed=True)} {_interval(ci)} vs limit +{limit:g}"
        out.append(_judged(f"max_gap_increase[{group}]", text, change, ci, limit, drop=False, significant=significant,
                           comparison=comparison, figures=figures))
    return out


def _group_rows(audit: Mapping[str, Any], who: str) -> tuple[Mapping[str, Any] | None, str | None]:
    """The per-condition worst-group figures of an audit, or why there are none."""
    groups = audit.get("groups")
    if not isinstance(groups, Mapping):
        return None, f"the {who} audit has no group accuracies (written by an older biasaudit: scan again)"
    if not groups.get("available", True):
        return None, f"the {who} audit has no group accuracies ({groups.get('note') or 'not available'})"
    if groups.get("blind"):
        return None, (f"the {who} audit's worst-group accuracy cannot see the bias: {groups['blind']} (scan a split with more "
                      "bias-conflicting samples, lower --min-group, or use --group-by alignment)")
    return groups.get("conditions") or {}, None


def _min_by_condition(current: Mapping[str, Any], minimums: Mapping[str, float], *, rule: str) -> list[RuleVerdict]:
    """min_accuracy (a condition row's accuracy) and min_worst_group (its worst-group accuracy)."""
    if rule == "min_accuracy":
        rows, why = {row["name"]: {"value": row["accuracy"], "ci": row.get("accuracy_ci")} for row in current["conditions"]}, None
        what = "accuracy"
    else:
        groups, why = _group_rows(current, "current")
        rows = {c: {"value": v.get("worst_group"), "ci": v.get("worst_group_ci")} for c, v in (groups or {}).items()}
        what = "worst-group accuracy"
    out = []
    for condition, minimum in minimums.items():
        name = f"{rule}[{condition}]"
        if why:
            out.append(RuleVerdict(name, "ERROR", why, {"minimum": minimum}))
            continue
        row = rows.get(condition)
        if row is None:
            out.append(RuleVerdict(name, "ERROR", f"the audit has no {what} for condition {condition!r}. Available: {', '.join(rows)}",
                                   {"minimum": minimum}))
            continue
        value = row["value"]
        if value is None:
            note = ((current.get("groups") or {}).get("note") if rule == "min_worst_group" else None) or "the audit holds null"
            out.append(RuleVerdict(name, "ERROR", f"the audit has no {what} for condition {condition!r}: {note}", {"minimum": minimum}))
            continue
        status = "PASS" if value >= minimum else "FAIL"
        out.append(RuleVerdict(name, status, f"{condition} {what} {_points(value)}% {'>=' if status == 'PASS' else '<'} {minimum:g}%",
                               {rule.removeprefix("min_"): value, f"{rule.removeprefix('min_')}_ci": row["ci"], "minimum": minimum}))
    return out


def _worst_group_drop(comparison: Mapping[str, Any], limits: Mapping[str, float], *, significant: bool) -> list[RuleVerdict]:
    entries = comparison["bias"]["worst_group"]
    out = []
    for condition, limit in limits.items():
        name = f"max_worst_group_drop[{condition}]"
        if entries is None:
            why = _as_gate_words(comparison["bias"]["lacking"].get("groups") or ["an audit has no group accuracies"])
            out.append(RuleVerdict(name, "ERROR", f"no worst-group accuracy to compare: {'; '.join(why)}", {"limit": limit}))
            continue
        entry = entries.get(condition)
        if entry is None or entry["delta"] is None:
            out.append(RuleVerdict(name, "ERROR", f"no worst-group accuracy of condition {condition!r} in both audits. Available: "
                                                  f"{', '.join(c for c, e in entries.items() if e['delta'] is not None)}", {"limit": limit}))
            continue
        change, ci = entry["delta"], entry.get("delta_ci")
        figures = {"baseline": entry["before"], "current": entry["after"], "change": change, "change_ci": ci, "limit": limit,
                   "paired": comparison["paired"]}
        text = (f"{condition} worst-group accuracy {_points(entry['before'])} -> {_points(entry['after'])}%, change {number(change, signed=True)} "
                f"{_interval(ci)} vs limit -{limit:g}")
        out.append(_judged(name, text, change, ci, limit, drop=True, significant=significant, comparison=comparison, figures=figures))
    return out


def _as_gate_words(reasons: list[str]) -> list[str]:
    """compare speaks of before/after audits; the gate of the baseline and the current one."""
    return [r.replace("the before audit", "the baseline audit").replace("the after audit", "the current audit") for r in reasons]


def _bias_follow_increase(comparison: Mapping[str, Any], limits: Mapping[str, float], *, significant: bool) -> list[RuleVerdict]:
    entries = comparison["bias"]["bias_follow"]
    carrier, current_carrier = comparison["bias"]["carrier"]["before"], comparison["bias"]["carrier"]["after"]
    if entries is None:
        why = _as_gate_words(comparison["bias"]["lacking"].get("carrier") or ["an audit has no carrier test"])
        return [RuleVerdict(f"max_bias_follow_increase[{m if m != ALL else 'carrier'}]", "ERROR",
                            f"no bias-follow rates to compare: {'; '.join(why)}", {"limit": x}) for m, x in limits.items()]
    targets: dict[str, tuple[float, str]] = {}
    if ALL in limits:
        # Plain X: the modality that carried the shortcut in the baseline, and the current carrier when the shortcut
        # moved (BalGrad can move it from the caption into the image); with no carrier in either, every modality.
        whose = {m: note for m, note in ((carrier, " (the baseline's carrier)"), (current_carrier, " (the current carrier)"))
                 if m in entries}
        if carrier in entries and current_carrier in entries and carrier == current_carrier:
            whose = {carrier: " (the carrier of both audits)"}
        whose = whose or {m: " (neither audit names a carrier, so every modality)" for m in entries}
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
        figures = {"modality": modality, "carrier": modality == carrier, "baseline": entry["before"], "current": entry["after"],
                   "change_points": change, "change_ci_points": ci, "limit": limit, "paired": comparison["paired"]}
        text = (f"{modality}{note} bias-follow rate {pct(entry['before'])} -> {pct(entry['after'])}, change {number(change, signed=True)} "
                f"{_interval(ci)} points vs limit +{limit:g}")
        out.append(_judged(name, text, change, ci, limit, drop=False, significant=significant, comparison=comparison, figures=figures))
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
        return (f"the {who} audit has no JSD mean: no bias value has {jsd.get('min_wrong', 'enough')} mistakes (scan with a lower "
                "--min-wrong, or use --jsd weighted)")
    return f"the {who} audit has no weighted JSD mean: no bias value with mistakes has a training prior"


def _jsd_drop(comparison: Mapping[str, Any], limit: float, statistic: str, audits: Mapping[str, Mapping[str, Any]]) -> list[RuleVerdict]:
    key, name = JSD_STATISTICS[statistic], "max_jsd_drop"
    values = {who: (audit.get("jsd") or {}).get(key) if (audit.get("jsd") or {}).get("available") else None for who, audit in audits.items()}
    lacking = [_jsd_missing(audits[who], key, who) for who, value in values.items() if value is None]
    if lacking:
        return [RuleVerdict(name, "ERROR", f"JSD {statistic}: {'; '.join(lacking)}", {"limit": limit, "statistic": statistic})]
    before, after = values["baseline"], values["current"]
    drop = before - after
    status = "PASS" if drop <= limit else "FAIL"
    return [RuleVerdict(name, status, f"JSD {statistic} {number(before, 3)} -> {number(after, 3)}, drop {number(drop, 3, signed=True)} {'<=' if status == 'PASS' else '>'} "
                                      f"{limit:g} (plain difference: the JSD has no interval)",
                        {"statistic": statistic, "baseline": before, "current": after, "drop": drop, "limit": limit})]


def _check_modalities(rules: GateRules, audits: list[Mapping[str, Any]]) -> None:
    """A modality named in --max-bias-follow-increase must be one of the audits'; only they can say which exist."""
    named = [m for m in (rules.max_bias_follow_increase or {}) if m != ALL]
    known = list(dict.fromkeys(m.get("name") for audit in audits for m in (audit.get("dataset") or {}).get("modalities") or []
                               if isinstance(m, Mapping)))
    unknown = [m for m in named if m not in known]
    if unknown and known:
        raise InputError(f"{rules._label('max_bias_follow_increase')} names modality {unknown[0]!r}, which the audits do not have; "
                         f"expected MODALITY=POINTS. Available: {', '.join(known)}.")


def _check_conditions(rules: GateRules, current: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> None:
    """A condition a rule names must be one the audits ran: a typo, or a rule written for another scan, is the user's
    mistake (exit 2 before any verdict is written), not a rule that cannot be evaluated (ERROR)."""
    audits = {"min_accuracy": [current], "min_worst_group": [current],
              "max_worst_group_drop": [current] + ([baseline] if baseline is not None else [])}
    for rule, checked in audits.items():
        for audit in checked:
            ran = [row.get("name") for row in audit.get("conditions") or [] if isinstance(row, Mapping)]
            unknown = [c for c in (getattr(rules, rule) or {}) if c != ALL and c not in ran]
            if unknown and ran:
                which = "the audit" if audit is current else "the baseline"
                raise InputError(f"{rules._label(rule)} names condition {unknown[0]!r}, which {which} did not run; expected "
                                 f"CONDITION=VALUE. Available: {', '.join(ran)}.")


def evaluate_gate(current: Mapping[str, Any], rules: GateRules, *, baseline: Mapping[str, Any] | None = None,
                  current_name: str = "current", baseline_name: str = "baseline") -> dict[str, Any]:
    """Every rule's verdicts and the overall status and exit code; InputError for unusable rules or audits."""
    if rules.is_empty:
        raise InputError("No gate rule was given; use --min-worst-group, --max-worst-group-drop, --max-bias-follow-increase, "
                         "--max-jsd-drop (these with --baseline), --max-gap, --max-gap-increase or --min-accuracy.")
    if baseline is None and rules.comparing:
        needs = rules.comparing
        raise InputError(f"{' and '.join(needs)} {'compares' if len(needs) == 1 else 'compare'} against a stored audit; "
                         "give it with --baseline BASE.json.")
    _check_modalities(rules, [current] + ([baseline] if baseline is not None else []))
    _check_conditions(rules, current, baseline)
    verdicts: list[RuleVerdict] = []
    if rules.max_gap:
        verdicts += _max_gap(current, rules.max_gap)
    if rules.min_accuracy:
        verdicts += _min_by_condition(current, rules.min_accuracy, rule="min_accuracy")
    if rules.min_worst_group:
        verdicts += _min_by_condition(current, rules.min_worst_group, rule="min_worst_group")
    comparison = None
    if baseline is not None and rules.comparing:
        try:
            comparison = compare_audits(baseline, current)
        except InputError as exc:
            raise InputError(f"{baseline_name} vs {current_name}: {exc}") from exc
        if rules.max_worst_group_drop:
            verdicts += _worst_group_drop(comparison, rules.max_worst_group_drop, significant=rules.significant)
        if rules.max_bias_follow_increase:
            verdicts += _bias_follow_increase(comparison, rules.max_bias_follow_increase, significant=rules.significant)
        if rules.max_gap_increase:
            verdicts += _gap_increase(comparison, rules.max_gap_increase, significant=rules.significant)
        if rules.max_jsd_drop is not None:
            verdicts += _jsd_drop(comparison, rules.max_jsd_drop, rules.jsd, {"baseline": baseline, "current": current})
    statuses = {v.status for v in verdicts}
    overall = "ERROR" if "ERROR" in statuses else "FAIL" if "FAIL" in statuses else "WARN" if "WARN" in statuses else "PASS"
    exit_code = {"ERROR": 2, "FAIL": 1}.get(overall, 0)
    return {"schema": "biasaudit.gate", "schema_version": 1, "status": overall, "exit_code": exit_code,
            "current": current_name, "baseline": baseline_name if baseline is not None else None,
            "paired": comparison["paired"] if comparison else None,
            "unpaired_reason": comparison["unpaired_reason"] if comparison else None,
            "significant": rules.significant,
            "significant_means": "a change past its limit fails only when its whole paired 95% interval lies beyond the limit"
            if rules.significant else None,
            "jsd_statistic": rules.jsd if rules.max_jsd_drop is not None else None,
            "rules": [v.to_dict() for v in verdicts]}
