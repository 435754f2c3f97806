"""What a notebook shows for an Audit, a Comparison, a GateResult or a LeaderboardResult (`_repr_html_`): the verdict and
the key table, small and self-contained; the full report is `to_html` (the leaderboard's page is written beside it)."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import TYPE_CHECKING

from biasaudit.verdict.words import interval, number

if TYPE_CHECKING:
    from biasaudit.results.audit import Audit
    from biasaudit.results.comparison import Change, Comparison
    from biasaudit.results.estimate import Estimate
    from biasaudit.results.gate_result import GateResult, RuleResult
    from biasaudit.results.leaderboard_result import LeaderboardResult


def _points(value: float | None, ci: tuple[float, float] | None = None, *, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return number(value, signed=signed) + (f" {interval(ci)}" if ci is not None else "")


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def audit_html(audit: Audit) -> str:
    headline = audit.verdict.headline if audit.verdict is not None else ""
    rows = [
        (c.name, _points(c.accuracy, c.accuracy_ci), "" if c.flip_rate is None else number(c.flip_rate, scale=100) + "%")
        for c in audit.conditions
    ]
    bias = audit.bias
    facts = [("carrier", bias.carrier or "none found"), ("relied on most", bias.dominant or "n/a")]
    full = bias._worst_group_as_reported()
    if full is not None:
        facts.append(("worst-group accuracy (full)", _points(full.value, full.interval)))
    return (
        f"<div class='biasaudit-audit'><p><strong>{escape(headline)}</strong></p>"
        + _table(("", ""), facts)
        + _table(("condition", "accuracy % [95% CI]", "flip rate"), rows)
        + "</div>"
    )


def comparison_html(comparison: Comparison) -> str:
    def row(name: str, change: Change | None) -> tuple[str, str, str, str]:
        if change is None:
            return (name, "n/a", "n/a", "n/a")
        return (name, _points(change.before), _points(change.after), _points(change.delta, change.delta_ci, signed=True))

    rows = [row("Full accuracy", comparison.accuracy), row("missing-modality Gap", comparison.missing_gap)]
    rows += [row(f"worst-group ({name})", change) for name, change in comparison.bias.worst_group.items() if name == "full"]
    if comparison.bias.ood is not None:
        rows.append(row("OOD accuracy", comparison.bias.ood))
    return (
        f"<div class='biasaudit-comparison'><p><strong>{escape(comparison.verdict)}</strong></p>"
        + _table(("measure", "before", "after", "change [95% CI]"), rows)
        + "</div>"
    )


def gate_html(result: GateResult) -> str:
    def judged(rule: RuleResult) -> str:
        """The rule's main figure against its limit: what a reader checks first."""
        figures = rule.measured
        shown: Estimate | None = next(
            (
                e
                for e in (figures.change_points, figures.change, figures.gap, figures.accuracy, figures.worst_group)
                if e is not None
            ),
            None,
        )
        value = str(shown) if shown is not None else _points(figures.drop if figures.drop is not None else figures.current)
        limit = figures.limit if figures.limit is not None else figures.minimum
        return f"{value} (limit {_points(limit)})" if limit is not None else value

    rows = [(rule.rule, rule.status, judged(rule)) for rule in result.rules]
    return (
        f"<div class='biasaudit-gate'><p><strong>{escape(result.status)}</strong> (exit code {result.exit_code})</p>"
        + _table(("rule", "status", "figure [95% CI]"), rows)
        + "</div>"
    )


def leaderboard_html(result: LeaderboardResult) -> str:
    methods = result.methods
    names = [m.name for m in result.measures]
    rows = [
        (
            name + (" (control)" if entry.control else "") + (" (recommended)" if entry.recommended else ""),
            *("" if entry.control else str(entry.changes[m]) if m in entry.changes else "n/a" for m in names),
        )
        for name, entry in methods.items()
    ]
    labels = [f"{m.label}: change [95% CI]" for m in result.measures]
    return (
        f"<div class='biasaudit-leaderboard'><p><strong>{escape(result.verdict)}</strong></p>"
        + _table(("method", *labels), rows)
        + "</div>"
    )
