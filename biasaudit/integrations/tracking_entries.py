"""The tracker entries of the results that compare or judge audits: a comparison, a fix, a gate verdict and a
leaderboard (an audit's is in tracking_keys.py, with the rules every key follows), `entry_of` for any result, and
`gate_thresholds`, the gate's rules as thresholds on logged metric keys (MLflow's MetricThreshold,
tracking_mlflow.metric_thresholds). docs/trackers.md lists every key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from biasaudit.integrations.tracking_keys import (
    CI,
    PREFIX,
    Entry,
    Figures,
    Param,
    Table,
    _params,
    audit_entry,
    audit_metrics,
    audit_params,
    part,
    rule_path,
)

if TYPE_CHECKING:
    from biasaudit.integrations.tracking_keys import Result
    from biasaudit.results.comparison import Comparison
    from biasaudit.results.fix_result import FixResult
    from biasaudit.results.gate_result import GateResult
    from biasaudit.results.leaderboard_result import LeaderboardResult

P = PREFIX


def comparison_metrics(comparison: Comparison, p: str = P) -> Figures:
    """Each figure's change (p/change/...), before (p/before/...) and after (p/..., the keys an audit has)."""
    figures = Figures()
    for row in comparison.conditions:
        figures.change(f"{part(row.name)}/accuracy{CI}", row.accuracy, p, row.before_ci, row.after_ci)
    for group, changes in (("missing", comparison.missing), ("noisy", comparison.noisy)):
        if changes is not None:
            figures.change(f"reliance/gap{CI}/{group}", changes.gap, p)
            figures.change(f"reliance/avg{CI}/{group}", changes.avg, p)
    bias = comparison.bias
    for measure, entries in (
        ("follow_rate", bias.follow_rate),
        ("worst_group", bias.worst_group),
        ("bias_balanced", bias.bias_balanced),
    ):
        for name, change in entries.items():
            figures.change(f"bias/{measure}{CI}/{part(name)}", change, p)
    figures.change(f"bias/ood_accuracy{CI}", bias.ood, p)
    if comparison.jsd is not None:
        for statistic, pair in (("jsd_mean", comparison.jsd.mean), ("jsd_weighted_mean", comparison.jsd.weighted_mean)):
            if pair is not None:
                figures.put(f"{p}/before/bias/{statistic}", pair.before)
                figures.put(f"{p}/bias/{statistic}", pair.after)
                if pair.before is not None and pair.after is not None:
                    figures.put(f"{p}/change/bias/{statistic}", pair.after - pair.before)
    return figures


def _changes_table(comparison: Comparison) -> Table:
    return Table(
        "changes",
        ("condition", "before", "after", "change", "change_ci_low", "change_ci_high"),
        tuple(
            (row.name, row.accuracy.before, row.accuracy.after, row.accuracy.delta, *(row.accuracy.delta_ci or (None, None)))
            for row in comparison.conditions
        ),
    )


def _comparison_tags(comparison: Comparison, kind: str) -> dict[str, str]:
    return {
        f"{P}/kind": kind,
        f"{P}/verdict": comparison.verdict,
        f"{P}/carrier": comparison.bias.carrier_after or "none",
        f"{P}/carrier_before": comparison.bias.carrier_before or "none",
    }


def comparison_entry(comparison: Comparison) -> Entry:
    params = _params({f"{P}/split": comparison.split, f"{P}/paired": comparison.paired})
    return Entry(
        "compare", comparison_metrics(comparison), params, _comparison_tags(comparison, "compare"), (_changes_table(comparison),)
    )


def fix_entry(fix: FixResult) -> Entry:
    """The comparison's keys, the after audit's under biasaudit/ (as a scan of the fixed model logs them) and the
    before audit's under biasaudit/before/; a second split's changes under biasaudit/also/."""
    metrics = comparison_metrics(fix.comparison)
    metrics.update(audit_metrics(fix.before, f"{P}/before"))
    metrics.update(audit_metrics(fix.after))
    if fix.also is not None:
        metrics.update(comparison_metrics(fix.also.comparison, f"{P}/also"))
    training: Any = fix.train_log.get("training") or {}
    params: dict[str, Param] = {
        **audit_params(fix.after),
        **_params({f"{P}/fix/method": training.get("method"), f"{P}/fix/also_split": fix.also.split if fix.also else None}),
        **_params({f"{P}/fix/{part(k)}": v for k, v in (training.get("settings") or {}).items()}),
        **_params({f"{P}/fix/config/{part(k)}": v for k, v in (training.get("config") or {}).items()}),
    }
    tags = {**_comparison_tags(fix.comparison, "fix"), f"{P}/method": str(training.get("method"))}
    return Entry("fix", metrics, params, tags, (_changes_table(fix.comparison),))


def gate_metrics(gate: GateResult) -> Figures:
    """Per rule: the figures it was judged on and `passed` (1 for PASS or WARN, 0 for FAIL or ERROR); the exit code.
    Every figure of a rule is in the rule's unit, points: a bias-follow rule's baseline and current rates, which its
    verdict holds as fractions, are logged as 100 x the rate, as its limit and change_points are."""
    figures = Figures()
    figures.put(f"{P}/gate/exit_code", gate.exit_code)
    for rule in gate.rules:
        key, measured = f"{P}/gate/{rule_path(rule.rule)}", rule.measured
        figures.put(f"{key}/passed", 1.0 if rule.status in ("PASS", "WARN") else 0.0)
        rates = measured.change_points is not None  # only a rate's rule has its change in points beside the rates
        for name in ("limit", "minimum", "drop"):
            figures.put(f"{key}/{name}", getattr(measured, name))
        for name in ("baseline", "current"):
            value = getattr(measured, name)
            figures.put(f"{key}/{name}", 100 * value if rates and value is not None else value)
        for name in ("gap", "accuracy", "worst_group", "change", "change_points"):
            figures.estimate(f"{key}/{name}{CI}", getattr(measured, name))
    return figures


def gate_entry(gate: GateResult) -> Entry:
    failed = [rule.rule for rule in gate.rules if rule.status in ("FAIL", "ERROR")]
    verdict = f"{gate.status}: " + (
        f"{', '.join(failed)} failed" if failed else f"{len(gate.rules)} rule{'s' if len(gate.rules) != 1 else ''} passed"
    )
    tags = {
        f"{P}/kind": "gate",
        f"{P}/verdict": verdict,
        f"{P}/gate/status": gate.status,
        **{f"{P}/gate/{rule_path(rule.rule)}/status": rule.status for rule in gate.rules},
    }
    params = _params(
        {
            f"{P}/gate/current": gate.current,
            f"{P}/gate/baseline": gate.baseline,
            f"{P}/gate/significant": gate.significant,
            f"{P}/gate/jsd_statistic": gate.jsd_statistic,
            f"{P}/gate/config_file": gate.config_file,
        }
    )
    table = Table("rules", ("rule", "status", "message"), tuple((r.rule, r.status, r.message) for r in gate.rules))
    return Entry("gate", gate_metrics(gate), params, tags, (table,))


def leaderboard_entry(board: LeaderboardResult) -> Entry:
    """Per method: recommended (1 or 0), and per measure its change against the control (with the interval over seeds
    and samples), its mean and standard deviation over seeds."""
    figures, methods = Figures(), board.methods
    measures = [measure.name for measure in board.measures]
    rows = []
    for name, method in methods.items():
        key = f"{P}/leaderboard/{part(name)}"
        figures.put(f"{key}/recommended", 1.0 if method.recommended else 0.0)
        row: list[Any] = [name, method.control, method.recommended]
        for measure in measures:
            spread, change = method.values.get(measure), method.changes.get(measure)
            figures.estimate(f"{key}/{part(measure)}/change{CI}", change)
            figures.put(f"{key}/{part(measure)}/mean", spread.mean if spread else None)
            figures.put(f"{key}/{part(measure)}/std", spread.std if spread else None)
            row += [spread.mean if spread else None, *((change.value, change.low, change.high) if change else (None,) * 3)]
        rows.append(tuple(row))
    columns = (
        "method",
        "control",
        "recommended",
        *(f"{m}_{what}" for m in measures for what in ("mean", "change", "change_ci_low", "change_ci_high")),
    )
    control = next((method for method in methods.values() if method.control), None)
    params = _params(
        {
            f"{P}/split": board.split,
            f"{P}/ood": board.ood,
            f"{P}/leaderboard/methods": ",".join(methods),
            f"{P}/leaderboard/seeds": ",".join(str(run.seed) for run in control.seeds) if control else None,
        }
    )
    tags = {
        f"{P}/kind": "leaderboard",
        f"{P}/verdict": board.verdict,
        f"{P}/leaderboard/recommended": board.recommended or "none",
        f"{P}/carrier": board.carrier or "none",
    }
    return Entry("leaderboard", figures, params, tags, (Table("methods", columns, tuple(rows)),))


def entry_of(result: Result) -> Entry:
    from biasaudit.results.audit import Audit
    from biasaudit.results.comparison import Comparison
    from biasaudit.results.gate_result import GateResult
    from biasaudit.results.leaderboard_result import LeaderboardResult

    if isinstance(result, Audit):
        return audit_entry(result)
    if isinstance(result, Comparison):
        return comparison_entry(result)
    if isinstance(result, GateResult):
        return gate_entry(result)
    if isinstance(result, LeaderboardResult):
        return leaderboard_entry(result)
    return fix_entry(result)


def gate_thresholds(gate: GateResult) -> dict[str, tuple[float, bool]]:
    """Each rule of the verdict as (threshold, greater_is_better) on the metric key it limits: a single-audit rule on
    the audit's key (min_accuracy[C] on biasaudit/C/accuracy), a baseline rule on the change key a comparison or a fix
    logs (max_gap_increase[G] on biasaudit/change/reliance/gap/G). With `significant`, a change's limit applies to the
    interval's near end, as the gate judges it, where the rule had a paired interval. A rule of an ERROR verdict maps
    onto a key the run lacks, which MLflow's validation fails as the gate did; a rule added to the registry without a
    mapping here is left out."""
    out: dict[str, tuple[float, bool]] = {}
    for rule in gate.rules:
        name, _, bracket = rule.rule.partition("[")
        key, measured = part(bracket.removesuffix("]")), rule.measured
        change = measured.change or measured.change_points
        near = "_ci_low" if name != "max_worst_group_drop" else "_ci_high"
        ci = near if gate.significant and measured.paired and change is not None and change.interval is not None else ""
        if name == "min_accuracy" and measured.minimum is not None:
            out[f"{P}/{key}/accuracy"] = (measured.minimum, True)
        elif name == "min_worst_group" and measured.minimum is not None:
            out[f"{P}/bias/worst_group/{key}"] = (measured.minimum, True)
        elif name == "max_gap" and measured.limit is not None:
            out[f"{P}/reliance/gap/{key}"] = (measured.limit, False)
        elif name == "max_gap_increase" and measured.limit is not None:
            out[f"{P}/change/reliance/gap{ci}/{key}"] = (measured.limit, False)
        elif name == "max_worst_group_drop" and measured.limit is not None:
            out[f"{P}/change/bias/worst_group{ci}/{key}"] = (-measured.limit, True)
        elif name == "max_bias_follow_increase" and measured.limit is not None:  # the rule's points; the key's fractions
            out[f"{P}/change/bias/follow_rate{ci}/{key}"] = (measured.limit / 100, False)
        elif name == "max_jsd_drop" and measured.limit is not None and measured.statistic is not None:
            statistic = "jsd_weighted_mean" if measured.statistic == "weighted" else "jsd_mean"
            out[f"{P}/change/bias/{statistic}"] = (-measured.limit, True)
    return out
