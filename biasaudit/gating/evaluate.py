"""evaluate_gate: every rule of the registry that GateRules sets, over an audit (and a baseline audit) -> PASS / WARN /
FAIL / ERROR verdicts, an overall status and an exit code for CI.

`significant`: a baseline rule's change past its limit FAILs only when its whole paired 95% interval lies beyond the
limit (lo > limit for an increase, hi < -limit for a drop); otherwise it WARNs. It applies to every rule with a paired
interval (Gap, worst-group, bias-follow). When the audits do not pair, or a measure has no replicates, the plain
difference decides and the verdict says so; the JSD has no interval.
ERROR: the rule cannot be evaluated on these audits (a condition or section is absent). Exit codes: 2 when any rule is
in ERROR, else 1 when any FAILs, else 0 (WARN passes).
With a baseline, the document's `changes` block lists the measures that moved most (changes.py), whatever the rules.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from biasaudit.errors import BiasAuditError, InputError
from biasaudit.gating.limits import ALL
from biasaudit.gating.registry import RULES, flags
from biasaudit.gating.registry import GateRules
from biasaudit.gating.verdicts import RuleVerdict

_REQUIRED_SECTIONS = ("manifest", "conditions", "summary", "dataset")


def check_audit_shape(audit: Mapping[str, Any], *, source: str) -> None:
    """The sections the gate reads; read_audit has already checked the schema and version."""
    missing = [key for key in _REQUIRED_SECTIONS if key not in audit]
    if missing:
        raise InputError(f"Audit file {source} lacks the {', '.join(missing)} section(s) a scan writes; re-run the scan.")


def _no_rule() -> str:
    by_kind = {kind: [r for r in RULES.values() if r.kind == kind] for kind in ("bias", "reliance")}
    comparing = [r for r in RULES.values() if r.needs_baseline]
    return (
        f"No gate rule was given; use a bias rule ({flags(by_kind['bias'])}) or a reliance rule "
        f"({flags(by_kind['reliance'])}); {flags(comparing, last='and')} compare against --baseline."
    )


def _check_targets(rules: GateRules, current: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> None:
    """A modality or condition a rule names must be one the audits have: a typo, or a rule written for another scan, is
    the user's mistake (exit 2 before any verdict is written), not a rule that cannot be evaluated (ERROR). Only the
    audits can say which exist."""
    both = [current] + ([baseline] if baseline is not None else [])
    # A name that is not a string (absent) names nothing a rule could target.
    known = list(
        dict.fromkeys(
            m["name"]
            for audit in both
            for m in (audit.get("dataset") or {}).get("modalities") or []
            if isinstance(m, Mapping) and isinstance(m.get("name"), str)
        )
    )
    for name, rule in RULES.items():
        unknown = [m for m in (getattr(rules, name, None) or {}) if m != ALL and m not in known] if rule.key == "modality" else []
        if unknown and known:
            raise InputError(
                f"{rules._label(name)} names modality {unknown[0]!r}, which the audits do not have; "
                f"expected MODALITY=POINTS. Available: {', '.join(known)}."
            )
    for name, rule in RULES.items():
        if rule.key != "condition":
            continue
        for audit in both if rule.needs_baseline else [current]:
            ran = [
                row["name"]
                for row in audit.get("conditions") or []
                if isinstance(row, Mapping) and isinstance(row.get("name"), str)
            ]
            unknown = [c for c in (getattr(rules, name, None) or {}) if c != ALL and c not in ran]
            if unknown and ran:
                which = "the audit" if audit is current else "the baseline"
                raise InputError(
                    f"{rules._label(name)} names condition {unknown[0]!r}, which {which} did not run; expected "
                    f"CONDITION=VALUE. Available: {', '.join(ran)}."
                )


def evaluate_gate(
    current: Mapping[str, Any],
    rules: GateRules,
    *,
    baseline: Mapping[str, Any] | None = None,
    current_name: str = "current",
    baseline_name: str = "baseline",
) -> dict[str, Any]:
    """Every rule's verdicts and the overall status and exit code; InputError for unusable rules or audits."""
    if rules.is_empty:
        raise InputError(_no_rule())
    if baseline is None and rules.comparing:
        needs = rules.comparing
        raise InputError(
            f"{' and '.join(needs)} {'compares' if len(needs) == 1 else 'compare'} against a stored audit; "
            "give it with --baseline BASE.json."
        )
    _check_targets(rules, current, baseline)
    verdicts: list[RuleVerdict] = []
    comparison = None
    for name, rule in RULES.items():
        limits = getattr(rules, name, None)
        if not rule.given(limits):
            continue
        if rule.needs_baseline and comparison is None:  # once, when the first rule that compares needs it
            assert baseline is not None  # rules.comparing without a baseline was refused above
            from biasaudit.comparing import compare_audits

            try:
                comparison = compare_audits(baseline, current)
            except InputError as exc:
                raise InputError(f"{baseline_name} vs {current_name}: {exc}") from exc
        verdicts += rule.evaluate(
            current,
            comparison if rule.needs_baseline else None,
            baseline if rule.needs_baseline else None,
            limits,
            rules.significant,
            **{setting: getattr(rules, setting) for setting in rule.settings},
        )
    changes = None
    if baseline is not None:
        changes = _changes(baseline, current, comparison)
    statuses = {v.status for v in verdicts}
    overall = "ERROR" if "ERROR" in statuses else "FAIL" if "FAIL" in statuses else "WARN" if "WARN" in statuses else "PASS"
    exit_code = {"ERROR": 2, "FAIL": 1}.get(overall, 0)
    reads_jsd = any(rule.given(getattr(rules, name, None)) for name, rule in RULES.items() if "jsd" in rule.settings)
    return {
        "schema": "biasaudit.gate",
        "schema_version": 1,
        "status": overall,
        "exit_code": exit_code,
        "current": current_name,
        "baseline": baseline_name if baseline is not None else None,
        "paired": comparison["paired"] if comparison else None,
        "unpaired_reason": comparison["unpaired_reason"] if comparison else None,
        "significant": rules.significant,
        "significant_means": "a change past its limit fails only when its whole paired 95% interval lies beyond the limit"
        if rules.significant
        else None,
        "jsd_statistic": rules.jsd if reads_jsd else None,
        "rules": [v.to_dict() for v in verdicts],
        "changes": changes,
    }


def _changes(baseline: Mapping[str, Any], current: Mapping[str, Any], comparison: Mapping[str, Any] | None) -> dict[str, Any]:
    """The largest changes against the baseline (changes.py), from the comparison the rules read, or from one made
    for them when no rule compared: audits that do not compare then say why, and fail no rule that did not ask."""
    from biasaudit.gating.changes import largest_changes, no_changes

    if comparison is None:
        from biasaudit.comparing import compare_audits

        # The section is context, not a rule: whatever the comparison refuses (the project's whole error family, not
        # only InputError) leaves it empty with the reason, and a gate whose rules never read the baseline still judges.
        # Anything else is a bug, left to surface as one.
        try:
            comparison = compare_audits(baseline, current)
        except BiasAuditError as exc:
            return no_changes(f"the audits do not compare: {exc}")
    return largest_changes(comparison)
