"""The gate's verdict as a Markdown summary for a pull request: the status, one table row per rule with its figures,
the largest changes against the baseline (the gate document's `changes` block, biasaudit.gating.changes), how changes
were judged, and links to the audits' HTML reports.

It fits where GitHub shows it: a pull-request comment holds at most 65,536 characters and a job summary
(GITHUB_STEP_SUMMARY) at most 1 MiB, so the table stops, with a line saying how many rules it leaves to the JSON,
before the text passes SUMMARY_LIMIT (below both)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from biasaudit._core.files import atomic_write_bytes
from biasaudit.verdict.words import interval, number

# Characters; GitHub's comment limit is 65,536 and a job summary's 1 MiB. The table stops before the summary passes it.
SUMMARY_LIMIT = 60_000
ICONS = {"PASS": "✅", "WARN": "⚠️", "FAIL": "❌", "ERROR": "🛑"}
# A changes row names a condition or modality from the audits; capped so that a few rows stay a few lines.
NAME_LIMIT = 120


def _cell(text: Any) -> str:
    """A table cell: pipes escaped and line breaks folded, so a message never breaks the row."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _value(entry: Mapping[str, Any], key: str) -> str:
    """A baseline or current figure in percent (a bias-follow rate is a fraction in the document)."""
    return number(entry[key], scale=100.0 if entry["unit"] == "fraction" else 1.0) + ("%" if entry[key] is not None else "")


def changes_lines(changes: Mapping[str, Any] | None) -> list[str]:
    """The section "Largest changes against the baseline": one row per change the gate document's `changes` block
    keeps, largest first, and a line on how to read them; nothing without a baseline."""
    if changes is None:
        return []
    lines = ["#### Largest changes against the baseline", ""]
    if changes.get("note"):
        return [*lines, f"The changes could not be computed: {_cell(changes['note'])}", ""]
    if not changes["largest"]:
        return [*lines, "No bias measure or condition accuracy changed.", ""]
    lines += ["| measure | baseline | candidate | change, points [95% interval] |", "|---|---|---|---|"]
    for entry in changes["largest"]:
        what = _cell(entry["what"])
        what = what if len(what) <= NAME_LIMIT else what[: NAME_LIMIT - 1] + "…"
        ci = interval(entry["change_ci_points"])
        change = number(entry["change_points"], signed=True) + (f" {ci}" if ci else "")
        lines.append(f"| {what} | {_value(entry, 'baseline')} | {_value(entry, 'current')} | {change} |")
    how = (
        "paired 95% intervals"
        if changes["paired"]
        else f"no intervals: the audits do not pair ({_cell(changes.get('unpaired_reason') or 'unknown reason')})"
    )
    shown = len(changes["largest"])
    rest = f"the {shown} largest of {changes['changed']} changes; " if changes["changed"] > shown else ""
    lines += ["", f"Candidate minus baseline, {rest}{how}. `biasaudit compare BASELINE CANDIDATE` lists every change.", ""]
    return lines


def gate_markdown(document: Mapping[str, Any], *, links: Sequence[tuple[str, str]] = (), limit: int = SUMMARY_LIMIT) -> str:
    """The summary of a gate document (biasaudit.gate, as evaluate_gate writes it); `links` are (label, target)
    pairs, e.g. the audits' HTML reports, listed under the table. The rule table is what gives way to `limit`: the
    changes section is a few short rows, kept whole."""
    rules = document["rules"]
    counts = {status: sum(rule["status"] == status for rule in rules) for status in ICONS}
    status = document["status"]
    head = [
        f"### {ICONS.get(status, '')} biasaudit gate: {status}",
        "",
        ", ".join(f"{count} {name}" for name, count in counts.items() if count) + f" of {len(rules)} rules; "
        f"candidate `{_cell(document['current'])}`"
        + (f", baseline `{_cell(document['baseline'])}`" if document.get("baseline") else ""),
        "",
        "| rule | status | figures |",
        "|---|---|---|",
    ]
    basis = []
    if document.get("paired") is not None:
        basis.append(
            "changes paired replicate by replicate"
            if document["paired"]
            else f"changes not paired ({_cell(document.get('unpaired_reason') or 'the audits do not pair')})"
        )
    if document.get("significant_means"):
        basis.append(f"--significant: {document['significant_means']}")
    tail = [""]
    if basis:
        tail += ["Judged with " + "; ".join(basis) + ".", ""]
    tail += changes_lines(document.get("changes"))
    tail += [f"- [{_cell(label)}]({target})" for label, target in links]
    rows = [
        f"| `{_cell(rule['rule'])}` | {ICONS.get(rule['status'], '')} {rule['status']} | {_cell(rule['message'])} |"
        for rule in rules
    ]
    # Failing rules first, so that a cut table still shows what blocks the change.
    order = {"ERROR": 0, "FAIL": 1, "WARN": 2, "PASS": 3}
    rows = [row for _, row in sorted(zip((order.get(r["status"], 4) for r in rules), rows, strict=True), key=lambda p: p[0])]
    size = sum(len(line) + 1 for line in head + tail) + 200  # room for the line that says what was left out
    kept = []
    for row in rows:
        if size + len(row) + 1 > limit:
            break
        kept.append(row)
        size += len(row) + 1
    if len(kept) < len(rows):
        kept.append(f"| … | | {len(rows) - len(kept)} more rules are in the gate's JSON (`--json`) |")
    return "\n".join(head + kept + tail).rstrip() + "\n"


def write_gate_summary(document: Mapping[str, Any], path: Path, *, links: Sequence[tuple[str, str]] = ()) -> None:
    atomic_write_bytes(gate_markdown(document, links=links).encode("utf-8"), path)
