"""The calls over written results, without a model: `compare`, `gate`, and `merge` of a sharded scan's parts."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from biasaudit._core.arguments import check_keywords, checked, output_dir
from biasaudit.errors import InputError
from biasaudit.gating import GateRules
from biasaudit.results import StrPath
from biasaudit.results.audit import Audit
from biasaudit.results.comparison import Comparison
from biasaudit.results.gate_result import GateResult

COMPARE_FILES = ("compare.json", "compare.html")


@checked("ba.compare", out=output_dir("ba.compare", "out"))
def compare(
    before: Audit, after: Audit, *, out: StrPath | None = None, train_log: StrPath | Mapping[str, Any] | None = None
) -> Comparison:
    """After vs before: per-condition and summary changes with paired bootstrap intervals when both audits are of the
    same samples, seed and generator (otherwise plain differences and the reason), bias measures first. Refuses
    (InputError) audits of other splits or conditions.

    `out` writes compare.json and compare.html into that directory as one set (stamped with the run), as `biasaudit
    compare --out` does; `train_log` (a fix run's train_log.json, or its contents) adds the training section to the HTML.

    Parameters: `before` and `after`, two Audits of the same split and conditions (e.g. before and after a fix); `out`
    and `train_log` (above).
    """
    from biasaudit.comparing import compare_audits

    log = _train_log(train_log)
    document = compare_audits(before.to_dict(), after.to_dict())
    if out is not None:
        from biasaudit._core.output_set import OutputSet
        from biasaudit.report.compare_render import write_compare_html
        from biasaudit.results import write_json_atomic

        with OutputSet(out, files=COMPARE_FILES, option="ba.compare's 'out'") as outputs:
            document = {"run": outputs.stamp(), **document}
            write_json_atomic(document, outputs.staged("compare.json"))
            write_compare_html(document, before.to_dict(), after.to_dict(), outputs.staged("compare.html"), train_log=log)
            outputs.commit(("compare.html", "compare.json"))  # the JSON, which tools read, last
    return Comparison.from_dict(document)


def _train_log(given: StrPath | Mapping[str, Any] | None) -> dict[str, Any] | None:
    from biasaudit.results import read_train_log

    if given is None:
        return None
    return read_train_log(given) if isinstance(given, (str, os.PathLike)) else dict(given)


def _compare_out_problem(value: StrPath | None) -> None:
    """ba.compare's check of `out`, for a caller that must know before other work (the CLI, before a tracker opens)."""
    output_dir("ba.compare", "out")(value)


def _junit_problem(value: StrPath | None) -> None:
    from biasaudit._core.output_paths import check_output_file

    if value is not None:
        check_output_file(value, option="ba.gate's 'junit'")


def _summary_problem(value: StrPath | None) -> None:
    from biasaudit._core.output_paths import check_output_file

    if value is not None:
        check_output_file(value, option="ba.gate's 'summary_md'")
        # Unlike other outputs, no directory is made for it: a summary is read by CI where its workflow names it, and
        # a misspelt directory would put it where nobody looks.
        if not Path(value).parent.is_dir():
            raise InputError(
                f"ba.gate's 'summary_md' is {value}, in a directory that does not exist ({Path(value).parent}); "
                "create it or name a file in an existing one."
            )


def _report_links(names: Sequence[str], summary: Path) -> list[tuple[str, str]]:
    """(label, relative target) of each audit's HTML report beside its JSON (audit.json -> audit.html), as a pull
    request's summary links them; audits given in memory, or without their HTML, have none."""
    links = []
    for name in names:
        html = Path(name).with_suffix(".html")
        if name.endswith(".json") and html.is_file():
            links.append((f"{html.name} of {name}", os.path.relpath(html, summary.resolve().parent)))
    return links


@checked("ba.gate", junit=_junit_problem, summary_md=_summary_problem)
def gate(
    current: Audit,
    *,
    rules: GateRules | Mapping[str, Any],
    baseline: Audit | None = None,
    junit: StrPath | None = None,
    summary_md: StrPath | None = None,
    current_name: str = "current",
    baseline_name: str = "baseline",
) -> GateResult:
    """Judge `current` (and its change from `baseline`) by `rules`; the same verdicts as `biasaudit gate`. `rules` is
    a GateRules, or a mapping of its keywords ({"max_gap": 5}). Rules that compare need a baseline; an unusable rule
    raises InputError naming it as the rules' `labels` spell it (the keyword from Python, the flag or the settings
    file's key from the command line). `junit` writes a JUnit XML report there, one test case per rule; `summary_md`
    a Markdown summary for a pull request or a CI job summary (GateResult.to_markdown, with links to the audits' HTML
    reports when `current_name` and `baseline_name` are their JSON files), written whatever the verdict;
    `current_name` and `baseline_name` are how the verdicts name the two audits (e.g. their files).

    Parameters: `current` (the candidate's Audit); `rules`; `baseline` (the reference Audit, for the rules that
    compare); `junit`, `summary_md`, `current_name`, `baseline_name` (above).
    """
    import dataclasses

    from biasaudit.gating import evaluate_gate

    if not isinstance(rules, GateRules):
        check_keywords(
            rules, [f.name for f in dataclasses.fields(GateRules) if f.name != "labels"], where="The 'rules' mapping of ba.gate"
        )
        rules = GateRules(**rules)
    if not rules.labels:  # rules from Python: the sentences name ba.gate's keywords (from the command line, its flags)
        if rules.is_empty:
            raise InputError("The 'rules' parameter of ba.gate holds no rule; give at least one, e.g. ba.GateRules(max_gap=5).")
        if baseline is None and rules.comparing:
            raise InputError(
                f"The rules {', '.join(rules.comparing)} compare against a baseline audit; "
                "pass baseline=ba.Audit.read(path) to ba.gate, or leave them out."
            )
    document = evaluate_gate(
        current.to_dict(),
        rules,
        baseline=baseline.to_dict() if baseline is not None else None,
        current_name=current_name,
        baseline_name=baseline_name,
    )
    if junit is not None:
        from biasaudit.report.junit import write_gate_junit

        write_gate_junit(document, Path(junit))
    if summary_md is not None:
        from biasaudit.report.gate_summary import write_gate_summary

        names = [current_name] + ([baseline_name] if baseline is not None else [])
        write_gate_summary(document, Path(summary_md), links=_report_links(names, Path(summary_md)))
    return GateResult.from_dict(document)


@checked("ba.merge", parts=lambda value: None if len(value) >= 1 else "one or more part files", out=output_dir("ba.merge", "out"))
def merge(parts: Sequence[StrPath], *, out: StrPath | None = None) -> Audit:
    """The audit of a sharded scan (`scan_shard(..., shard="I/N")` per job-array task, or `biasaudit scan --shard`):
    reads every shard's part file, checks that they are one scan's (same settings, model, adapter and data, each shard
    once) and merges their counts into the audit one process would have made. Needs no model, adapter or data. `out`
    writes audit.json and audit.html into that directory as one set, as `biasaudit merge --out` does.

    Parameters: `parts` (the part files, one per shard, in any order); `out` (above).
    """
    from biasaudit.scanning.parts import merge_parts

    if out is None:
        return Audit.from_dict(merge_parts([Path(p) for p in parts]))
    from biasaudit._core.output_set import OutputSet
    from biasaudit.scanning.audit import AUDIT_FILES, stamped, write_audit

    with OutputSet(out, files=AUDIT_FILES, option="ba.merge's 'out'") as outputs:  # locked before the merge's work
        document = stamped(merge_parts([Path(p) for p in parts]), outputs)
        write_audit(document, outputs)
    return Audit.from_dict(document)
