"""`biasaudit gate`: rules over audits -> a CI verdict and exit code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from biasaudit.cli.app import app
from biasaudit.cli.console import err, explicit_options, handled
from biasaudit.gating.registry import RULES


def rule_help(name: str) -> str:
    """A rule's --help, from its registry entry (biasaudit.gating.registry), so the flag says what the gate does."""
    rule = RULES[name]
    table = rule.key is not None  # a limit per key, repeatable; else one number
    text = f"{rule.limits.form}: {rule.description}" if table else rule.description
    return (f"{text} E.g. {rule.limits.example}{'; repeatable' if table else ''}. {'Needs --baseline. ' if rule.needs_baseline else ''}"
            f"A {rule.kind} rule.")


RULE_HELP = {name: rule_help(name) for name in RULES}


@app.command()
def gate(
    ctx: typer.Context,
    current: Path = typer.Argument(..., help="audit.json of the candidate model."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="audit.json kept as the reference (same split, conditions and seed).", rich_help_panel="Inputs"),
    min_worst_group: list[str] = typer.Option([], "--min-worst-group", metavar="CONDITION=PERCENT", help=RULE_HELP["min_worst_group"], rich_help_panel="Bias rules"),
    max_worst_group_drop: list[str] = typer.Option([], "--max-worst-group-drop", metavar="[CONDITION=]POINTS", help=RULE_HELP["max_worst_group_drop"], rich_help_panel="Bias rules"),
    max_bias_follow_increase: list[str] = typer.Option([], "--max-bias-follow-increase", metavar="[MODALITY=]POINTS", help=RULE_HELP["max_bias_follow_increase"], rich_help_panel="Bias rules"),
    max_jsd_drop: Optional[float] = typer.Option(None, "--max-jsd-drop", help=RULE_HELP["max_jsd_drop"], rich_help_panel="Bias rules"),
    jsd: str = typer.Option("weighted", "--jsd", metavar="weighted|mean", help="Which JSD --max-jsd-drop reads: weighted (every bias value with a "
                            "mistake, by its mistakes) or mean (only bias values with --min-wrong mistakes).", rich_help_panel="Bias rules"),
    max_gap: list[str] = typer.Option([], "--max-gap", metavar="[GROUP=]POINTS", help=RULE_HELP["max_gap"], rich_help_panel="Reliance rules"),
    max_gap_increase: list[str] = typer.Option([], "--max-gap-increase", metavar="[GROUP=]POINTS", help=RULE_HELP["max_gap_increase"], rich_help_panel="Reliance rules"),
    min_accuracy: list[str] = typer.Option([], "--min-accuracy", metavar="CONDITION=PERCENT", help=RULE_HELP["min_accuracy"], rich_help_panel="Accuracy and significance"),
    significant: bool = typer.Option(False, "--significant/--no-significant", help="A baseline rule's change past its limit fails "
                                     "only when its whole paired 95% interval lies beyond the limit (else WARN).", rich_help_panel="Accuracy and significance"),
    json_output: bool = typer.Option(False, "--json", help="Print the machine verdict as JSON on stdout.", rich_help_panel="Output"),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML report, one test case per rule.", rich_help_panel="Output"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="Rules file (default: biasaudit.toml, else the tool.biasaudit table of pyproject.toml).", rich_help_panel="Inputs"),
) -> None:
    """Turn audits into a CI verdict: exit 0 when no rule fails, 1 when one fails, 2 on a usage or input error."""
    import json

    from biasaudit.errors import InputError
    from biasaudit.cli.config_file import GATE_KEYS, load_settings, resolve
    from biasaudit.gating import check_audit_shape, evaluate_gate, gate_rules
    from biasaudit._core.output_paths import check_output_file
    from biasaudit.report.junit import write_gate_junit
    from biasaudit.results import read_audit

    with handled():
        settings = load_settings(config_file)
        v, sources = resolve({k: val for k, val in ctx.params.items() if k in GATE_KEYS}, explicit_options(ctx), settings, "gate")
        # Every rule is checked here, before any audit is read: a typo exits 2 without waiting on files.
        rules = gate_rules(v, sources=sources)
        baseline = Path(v["baseline"]) if v["baseline"] is not None else None
        if junit is not None:
            check_output_file(junit, option="--junit")
        audits = {}
        for name, path in (("current", current), ("baseline", baseline)):
            if path is not None:
                try:
                    audits[name] = read_audit(path)
                except InputError as exc:
                    if name == "baseline" and sources["baseline"] != "command line":
                        raise InputError(f"The baseline set in {sources['baseline']}: {exc}") from exc
                    raise
                check_audit_shape(audits[name], source=str(path))
        result = evaluate_gate(audits["current"], rules, baseline=audits.get("baseline"), current_name=str(current),
                               baseline_name=str(baseline) if baseline is not None else "baseline")
        result["settings"] = {"config_file": str(settings.path) if settings.path else None, "sources": sources}
        err.print(gate_table(result))
        if junit is not None:
            write_gate_junit(result, junit)
        if json_output:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")  # the verdict as json wrote it, never through the console
        if result["exit_code"]:
            raise typer.Exit(result["exit_code"])


STATUS_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", "ERROR": "bold magenta"}


def gate_table(result: dict) -> Table:
    table = Table(title=f"biasaudit gate: {result['status']}", title_justify="left")
    for column in ("rule", "status", "figures"):
        table.add_column(column)
    for rule in result["rules"]:
        # Rule names hold brackets ("max_gap[missing]"): escaped, or rich would read them as markup.
        table.add_row(escape(rule["rule"]), f"[{STATUS_STYLE[rule['status']]}]{rule['status']}[/]", escape(rule["message"]))
    return table
