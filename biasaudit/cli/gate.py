"""`biasaudit gate`: rules over audits -> a CI verdict and exit code."""

from __future__ import annotations

import inspect
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from biasaudit.api._names import GATE_RULES as RULES
from biasaudit.cli.app import app
from biasaudit.cli.console import err, explicit_options, handled
from biasaudit.cli.naming import COMMAND_LINE, DEFAULT, flag_of, named_as
from biasaudit.cli.tracker_options import Experiment, Log, RunName, TrackingUri, logged, tracking, wanted

SETTINGS = ("jsd", "significant")  # GateRules fields that are no rule


def rule_help(name: str) -> str:
    """A rule's --help, from its registry entry (biasaudit.gating.registry), so the flag says what the gate does."""
    rule = RULES[name]
    table = rule.key is not None  # a limit per key, repeatable; else one number
    text = f"{rule.limits.form}: {rule.description}" if table else rule.description
    return (
        f"{text} E.g. {rule.limits.example}{'; repeatable' if table else ''}. "
        f"{'Needs --baseline. ' if rule.needs_baseline else ''}A {rule.kind} rule."
    )


RULE_HELP = {name: rule_help(name) for name in RULES}


PANELS = {"bias": "Bias rules", "reliance": "Reliance rules"}


def rule_parameter(name: str) -> inspect.Parameter:
    """A rule's command-line option, built from its registry entry: a new rule gets its flag without an edit here."""
    rule = RULES[name]
    if rule.key is None:  # one number
        option = typer.Option(None, rule.flag, help=rule_help(name), rich_help_panel=PANELS[rule.kind])
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=float | None)
    unit = rule.limits.form.rsplit("=", 1)[-1]
    metavar = f"{rule.key.upper()}={unit}" if rule.target is None else f"[{rule.key.upper()}=]{unit}"
    option = typer.Option([], rule.flag, metavar=metavar, help=rule_help(name), rich_help_panel=PANELS[rule.kind])
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=list[str])


def gate(
    ctx: typer.Context,
    current: Path = typer.Argument(..., help="audit.json of the candidate model."),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="audit.json kept as the reference (same split, conditions and seed).", rich_help_panel="Inputs"
    ),
    jsd: str = typer.Option(
        "weighted",
        "--jsd",
        metavar="weighted|mean",
        help="Which JSD --max-jsd-drop reads: weighted (every bias value with a "
        "mistake, by its mistakes) or mean (only bias values with --min-wrong mistakes).",
        rich_help_panel="Bias rules",
    ),
    significant: bool = typer.Option(
        False,
        "--significant/--no-significant",
        help="A baseline rule's change past its limit fails "
        "only when its whole paired 95% interval lies beyond the limit (else WARN).",
        rich_help_panel="Significance",
    ),
    json_output: bool = typer.Option(
        False, "--json", help="Print the machine verdict as JSON on stdout.", rich_help_panel="Output"
    ),
    # Text, not Path: typer reads an empty path as ".", which would be blamed as a directory.
    junit_path: str | None = typer.Option(
        None, "--junit", metavar="FILE", help="Write a JUnit XML report, one test case per rule.", rich_help_panel="Output"
    ),
    summary_path: str | None = typer.Option(
        None,
        "--summary-md",
        metavar="FILE",
        help="Write a Markdown summary for a pull request (status, one row per rule, links to the audits' HTML), "
        "whatever the verdict. Under GitHub Actions the summary is also appended to the job summary "
        "(GITHUB_STEP_SUMMARY) and every rule is annotated (::error, ::warning, ::notice).",
        rich_help_panel="Output",
    ),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        help="Rules file (default: biasaudit.toml, else the tool.biasaudit table of pyproject.toml).",
        rich_help_panel="Inputs",
    ),
    log: Log = None,
    experiment: Experiment = None,
    run_name: RunName = None,
    tracking_uri: TrackingUri = None,
    **limits: object,  # one option per rule of the registry (rule_parameter), read through ctx.params
) -> None:
    """Turn audits into a CI verdict: exit 0 when no rule fails, 1 when one fails, 2 on a usage or input error."""
    import json

    import biasaudit as ba
    from biasaudit.errors import InputError
    from biasaudit.api._documents import _junit_problem, _summary_problem
    from biasaudit.cli.config_file import GATE_KEYS, load_settings, resolve

    with handled(), ExitStack() as held:
        settings = load_settings(config_file)
        v, sources = resolve({k: val for k, val in ctx.params.items() if k in GATE_KEYS}, explicit_options(ctx), settings, "gate")
        # Every rule is checked here, before any audit is read: a typo exits 2 without waiting on files. Each rule is
        # labelled as the user spelled it (its flag, or the settings file's key), which every sentence about it names.
        labels = {
            name: flag_of(name, {})
            if sources.get(name, DEFAULT).startswith((COMMAND_LINE, DEFAULT))
            else f"{sources[name]} {name}"
            for name in v
        }
        rules = ba.GateRules(**{name: v[name] for name in (*RULES, *SETTINGS) if v.get(name) is not None}, labels=labels)
        baseline = Path(v["baseline"]) if v["baseline"] is not None else None
        audits = {}
        for name, path in (("current", current), ("baseline", baseline)):
            if path is not None:
                try:
                    audits[name] = ba.Audit.read(path)
                except InputError as exc:
                    if name == "baseline" and sources["baseline"] != COMMAND_LINE:
                        raise InputError(f"The baseline set in {sources['baseline']}: {exc}") from exc
                    raise
        outputs = {"junit": "--junit", "summary_md": "--summary-md"}
        for flag, given, example in (("--junit", junit_path, "junit.xml"), ("--summary-md", summary_path, "summary.md")):
            if given is not None and not given.strip():
                raise InputError(f"{flag} is empty; name the file to write, e.g. {flag} {example}.")
        junit = Path(junit_path) if junit_path is not None else None
        summary_md = Path(summary_path) if summary_path is not None else None
        judged: dict[str, Any] = {
            "rules": rules,
            "baseline": audits.get("baseline"),
            "current_name": str(current),
            "baseline_name": str(baseline) if baseline is not None else "baseline",
        }
        if wanted(v["log"]):
            # Everything the gate can refuse, before the tracker's store is touched (MLflow's default creates
            # ./mlflow.db): its outputs' paths, and the verdict itself (no rule, a rule that cannot be used, audits
            # that differ), judged once without files; a verdict costs no scan, so judging it twice is cheap.
            with named_as(outputs):  # the checks ba.gate runs on them first
                _junit_problem(junit)
                _summary_problem(summary_md)
            ba.gate(audits["current"], **judged)
        # After every check, before the verdict's files: a tracker that cannot be used exits 2 with nothing written.
        tracker = held.enter_context(tracking(v["log"], v["experiment"], v["run_name"], v["tracking_uri"], sources=sources))
        with named_as(outputs):
            verdict = ba.gate(audits["current"], junit=junit, summary_md=summary_md, **judged)
        result = {
            **verdict.to_dict(),
            "settings": {"config_file": str(settings.path) if settings.path else None, "sources": sources},
        }
        err.print(gate_table(result))
        github_actions(verdict)
        if json_output:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")  # the verdict as json wrote it, never through the console
            sys.stdout.flush()
        # Last, once every output is written: a tracker failing now is a warning, and the exit code stays the verdict's.
        # The run ends here: a failing verdict is a finished run.
        later = (
            "log it with ba.log(ba.GateResult.from_dict(<the JSON above>), to={to})"
            if json_output
            else "run this gate again to log it (the verdict is the same: it reads only the audits)"
        )
        logged(tracker, ba.GateResult.from_dict(result), later=later)
        if result["exit_code"]:
            raise typer.Exit(result["exit_code"])


# typer reads the command's options from its signature and passes them all by keyword: the rules' go into **limits.
# The annotations evaluated (this module's are strings): typer finds an Annotated option (--log's) only in a real type.
_own = inspect.signature(gate, eval_str=True).parameters.values()
_fixed = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in list(_own)[:-1]]
_rules = [rule_parameter(name) for name in RULES]
# inspect.signature reads __signature__, an attribute a function type does not declare [attr-defined].
gate.__signature__ = inspect.Signature([*_fixed[:3], *_rules, *_fixed[3:]])  # type: ignore[attr-defined]
app.command()(gate)

ANNOTATIONS = {"FAIL": "error", "ERROR": "error", "WARN": "warning", "PASS": "notice"}


def _workflow_text(text: str) -> str:
    # GitHub's workflow commands end at a line break, and read % as the start of an escape.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_actions(verdict: Any) -> None:
    """Under GitHub Actions: the summary appended to the job summary, and one annotation per rule (on stderr, which
    the runner reads as it reads stdout, so that --json's stdout stays the verdict alone)."""
    import os

    from biasaudit.errors import InputError

    if os.environ.get("GITHUB_STEP_SUMMARY"):
        path = Path(os.environ["GITHUB_STEP_SUMMARY"])
        try:
            with path.open("a", encoding="utf-8") as summary:
                summary.write(verdict.to_markdown() + "\n")
        except OSError as exc:
            raise InputError(f"GITHUB_STEP_SUMMARY names {path}, which cannot be written ({exc.strerror}).") from None
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for rule in verdict.rules:
            title = _workflow_text(f"biasaudit gate: {rule.rule} {rule.status}").replace(",", "%2C").replace("::", "%3A%3A")
            sys.stderr.write(f"::{ANNOTATIONS[rule.status]} title={title}::{_workflow_text(rule.message)}\n")


STATUS_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", "ERROR": "bold magenta"}


def gate_table(result: dict) -> Table:
    table = Table(title=f"biasaudit gate: {result['status']}", title_justify="left")
    for column in ("rule", "status", "figures"):
        table.add_column(column)
    for rule in result["rules"]:
        # Rule names hold brackets ("max_gap[missing]"): escaped, or rich would read them as markup.
        table.add_row(escape(rule["rule"]), f"[{STATUS_STYLE[rule['status']]}]{rule['status']}[/]", escape(rule["message"]))
    return table
