"""The gate's pull-request summary (issue 24, item 2): `biasaudit gate --summary-md FILE` and `ba.gate(summary_md=)`
write the verdict as Markdown whatever it is (a failing gate is when a reviewer needs it most), under GitHub's
limits, and under GitHub Actions append it to the job summary and annotate each rule. Built on the hand-counted audit
pair of tests/fixtures/bias_pair.py: a fixed model against a biased baseline, and the other way round."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import biasaudit as ba
from biasaudit.cli import app
from biasaudit.report.gate_summary import gate_markdown

FIXTURES = Path(__file__).parent / "fixtures"
COMMENT_LIMIT = 65_536  # GitHub's limit on a pull-request comment, in characters


def _bias_pair_module():
    spec = importlib.util.spec_from_file_location("bias_pair_for_gate_summary", FIXTURES / "bias_pair.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAIR = _bias_pair_module()


@pytest.fixture
def audits(tmp_path) -> dict[str, Path]:
    paths = {}
    for name in ("biased", "debiased"):
        paths[name] = tmp_path / name / "audit.json"
        paths[name].parent.mkdir()
        paths[name].write_text(json.dumps(PAIR.make(name)), encoding="utf-8")
        paths[name].with_suffix(".html").write_text("<html></html>", encoding="utf-8")
    return paths


RULES = ["--max-worst-group-drop", "1", "--max-bias-follow-increase", "1", "--min-accuracy", "full=40"]


@pytest.mark.parametrize(
    "current, baseline, status, code", [("debiased", "biased", "PASS", 0), ("biased", "debiased", "FAIL", 1)]
)
def test_the_summary_is_written_whatever_the_verdict_and_names_every_rule(audits, tmp_path, current, baseline, status, code):
    summary = tmp_path / "summary.md"
    result = CliRunner().invoke(
        app, ["gate", str(audits[current]), "--baseline", str(audits[baseline]), *RULES, "--summary-md", str(summary)]
    )
    assert result.exit_code == code, result.output
    text = summary.read_text(encoding="utf-8")
    assert text.startswith(f"### {'✅' if status == 'PASS' else '❌'} biasaudit gate: {status}")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 3 and all(line.count(" | ") == 2 for line in rows)  # one row per verdict, no message broke one
    assert "`min_accuracy[full]`" in text and "max_worst_group_drop[full]" in text
    if status == "FAIL":  # the failing rules lead the table: a cut table still shows what blocks the change
        assert "FAIL" in rows[0] and "30" in rows[0]  # worst-group fell 30 points (45 -> 15), by hand
    assert "Judged with changes paired replicate by replicate." in text
    assert f"](../{current}/audit.html)" not in text and f"]({current}/audit.html)" in text  # relative to the summary
    assert len(text) < COMMENT_LIMIT


def test_the_python_call_writes_the_same_summary_as_the_command_line(audits, tmp_path):
    rules = ba.GateRules(max_worst_group_drop=1, max_bias_follow_increase=1, min_accuracy={"full": 40})
    verdict = ba.gate(
        ba.Audit.read(audits["biased"]),
        rules=rules,
        baseline=ba.Audit.read(audits["debiased"]),
        summary_md=tmp_path / "api.md",
        current_name=str(audits["biased"]),
        baseline_name=str(audits["debiased"]),
    )
    CliRunner().invoke(
        app,
        ["gate", str(audits["biased"]), "--baseline", str(audits["debiased"]), *RULES, "--summary-md", str(tmp_path / "cli.md")],
    )
    assert (tmp_path / "api.md").read_text(encoding="utf-8") == (tmp_path / "cli.md").read_text(encoding="utf-8")
    assert verdict.to_markdown().splitlines()[:6] == (tmp_path / "api.md").read_text(encoding="utf-8").splitlines()[:6]


def test_a_long_table_stops_under_the_limit_and_says_how_many_rules_it_left_out():
    document = {
        "status": "FAIL",
        "current": "a.json",
        "baseline": None,
        "paired": None,
        "rules": [{"rule": f"min_accuracy[c{i}]", "status": "FAIL", "message": "x" * 500} for i in range(400)],
    }
    text = gate_markdown(document, limit=20_000)
    assert len(text) <= 20_000 and "more rules are in the gate's JSON" in text
    shown = sum(line.startswith("| `") for line in text.splitlines())
    assert f"{400 - shown} more rules" in text


def test_a_pipe_or_line_break_in_a_message_cannot_break_the_table():
    document = {
        "status": "PASS",
        "current": "a|b.json",
        "baseline": None,
        "paired": None,
        "rules": [{"rule": "max_gap[missing]", "status": "PASS", "message": "gap 3 | limit 5\nsecond line"}],
    }
    row = next(line for line in gate_markdown(document).splitlines() if line.startswith("| `"))
    assert row == "| `max_gap[missing]` | ✅ PASS | gap 3 \\| limit 5 second line |"


def test_under_github_actions_the_job_summary_gets_the_summary_and_every_rule_an_annotation(audits, tmp_path):
    step_summary = tmp_path / "step_summary.md"
    step_summary.write_text("earlier step\n", encoding="utf-8")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(step_summary)}
    result = CliRunner().invoke(
        app, ["gate", str(audits["biased"]), "--baseline", str(audits["debiased"]), *RULES, "--json"], env=env
    )
    assert result.exit_code == 1
    appended = step_summary.read_text(encoding="utf-8")
    assert appended.startswith("earlier step\n### ❌ biasaudit gate: FAIL")  # appended, not overwritten
    annotations = [line for line in result.stderr.splitlines() if line.startswith("::")]
    assert len(annotations) == 3 and all(line.startswith("::error title=biasaudit gate: ") for line in annotations)
    assert "::full accuracy 30.0%25 < 40%25" in annotations[0]  # % escaped as the runner reads it
    assert json.loads(result.stdout)["status"] == "FAIL"  # the annotations stay off stdout, which --json owns


def test_a_summary_in_a_directory_that_does_not_exist_exits_2_and_writes_nothing(audits, tmp_path):
    target = tmp_path / "missing" / "summary.md"
    junit = tmp_path / "junit.xml"
    result = CliRunner().invoke(
        app,
        [
            "gate",
            str(audits["debiased"]),
            "--baseline",
            str(audits["biased"]),
            *RULES,
            "--summary-md",
            str(target),
            "--junit",
            str(junit),
        ],
    )
    assert result.exit_code == 2 and "--summary-md" in result.stderr and "Traceback" not in result.output
    assert not target.parent.exists() and not junit.exists()
