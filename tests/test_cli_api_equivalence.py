"""The command line is a shell over the public API (issue 23, item 1): each command run through the real entry point and
the same call through `ba.*` write the same outputs, field by field (run stamps, timings and the settings the command
line records about itself aside), and a bad value is named as its caller spelled it: the flag from the shell, the
keyword from Python. `fix` (every method) is checked the same way in tests/test_api.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import biasaudit as ba
from biasaudit.cli import app
from biasaudit.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures"
SHORTCUT = f"{FIXTURES / 'shortcut_adapter.py'}:ShortcutAdapter"
FAST = dict(bootstrap=20, projection="pca", gradient_batches=1, batch_size=32, min_wrong=1, conditions="missing,carrier")
FAST_FLAGS = ["--bootstrap", "20", "--projection", "pca", "--gradient-batches", "1", "--batch-size", "32", "--min-wrong", "1",
              "--conditions", "missing,carrier"]
# What says where and when a run happened, not what it found.
RUN_FIELDS = ("run", "wall_time_s", "created", "settings")


def cli(*args: object) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def without_run(document: dict) -> dict:
    """A written document without its run stamp and timings (top level and manifest)."""
    document = {k: v for k, v in document.items() if k != "run"}
    if isinstance(document.get("manifest"), dict):
        document["manifest"] = {k: v for k, v in document["manifest"].items() if k not in RUN_FIELDS}
    return document


def read(path: Path) -> dict:
    return without_run(json.loads(path.read_text()))


@pytest.fixture(scope="module")
def scans(shortcut_checkpoint, tmp_path_factory):
    """`biasaudit scan` and `ba.scan` of the same checkpoint, and the command line's audit (the second to compare with)."""
    where = tmp_path_factory.mktemp("scans")
    cli("scan", shortcut_checkpoint, "--adapter", SHORTCUT, *FAST_FLAGS, "--out", where / "cli")
    audit = ba.scan(shortcut_checkpoint, SHORTCUT, out=where / "api", **FAST)
    return where, audit, ba.Audit.read(where / "cli" / "audit.json")


def test_scan_writes_the_same_audit_from_the_shell_and_from_python(scans):
    where, audit, _ = scans
    written = read(where / "api" / "audit.json")
    assert read(where / "cli" / "audit.json") == written
    assert without_run(audit.to_dict()) == written  # what ba.scan returns is what it wrote
    assert written["manifest"]["checkpoint"]["sha256"] and written["manifest"]["adapter"]["spec"] == SHORTCUT
    assert json.loads((where / "cli" / "audit.json").read_text())["manifest"]["settings"]["sources"]["seed"] == "default"


def test_report_renders_the_same_html(scans, tmp_path):
    where, _, _ = scans
    cli("report", where / "api" / "audit.json", "--out", tmp_path / "cli.html")
    ba.Audit.read(where / "api" / "audit.json").to_html(tmp_path / "api.html")
    assert (tmp_path / "cli.html").read_text() == (tmp_path / "api.html").read_text()


def test_compare_writes_the_same_comparison(scans, tmp_path):
    where, audit, other = scans
    cli("compare", where / "api" / "audit.json", where / "cli" / "audit.json", "--out", tmp_path / "cli")
    comparison = ba.compare(audit, other, out=tmp_path / "api")
    written = read(tmp_path / "api" / "compare.json")
    assert read(tmp_path / "cli" / "compare.json") == written == without_run(comparison.to_dict())
    assert (tmp_path / "cli" / "compare.html").is_file() and (tmp_path / "api" / "compare.html").is_file()


def test_gate_gives_the_same_verdicts_and_junit(scans, tmp_path):
    where, audit, other = scans
    current, baseline = where / "api" / "audit.json", where / "cli" / "audit.json"
    result = CliRunner().invoke(app, ["gate", str(current), "--baseline", str(baseline), "--max-gap", "missing=80",
                                      "--min-accuracy", "full=50", "--max-gap-increase", "100", "--json",
                                      "--junit", str(tmp_path / "cli.xml")])
    assert result.exit_code in (0, 1), result.output
    shell = json.loads(result.stdout)
    verdict = ba.gate(ba.Audit.read(current), baseline=ba.Audit.read(baseline), junit=tmp_path / "api.xml",
                      rules=ba.GateRules(max_gap={"missing": 80}, min_accuracy={"full": 50}, max_gap_increase=100),
                      current_name=str(current), baseline_name=str(baseline))
    assert {k: v for k, v in shell.items() if k != "settings"} == verdict.to_dict()
    assert result.exit_code == verdict.exit_code
    assert (tmp_path / "cli.xml").read_text() == (tmp_path / "api.xml").read_text()


def test_a_sharded_scan_merges_to_the_same_audit_either_way(scans, shortcut_checkpoint, tmp_path):
    where, _, _ = scans
    shell_parts = [Path(cli("scan", shortcut_checkpoint, "--adapter", SHORTCUT, *FAST_FLAGS, "--shard", f"{i}/2",
                            "--out", tmp_path / "parts-cli").strip()) for i in (0, 1)]
    python_parts = [ba.scan_shard(shortcut_checkpoint, SHORTCUT, shard=f"{i}/2", out=tmp_path / "parts-api", **FAST) for i in (0, 1)]
    assert [p.name for p in shell_parts] == [p.name for p in python_parts] == ["scan-part-0-of-2.pt", "scan-part-1-of-2.pt"]
    cli("merge", *reversed(shell_parts), "--out", tmp_path / "merged-cli")
    merged = ba.merge(python_parts, out=tmp_path / "merged-api")
    written = read(tmp_path / "merged-api" / "audit.json")
    assert read(tmp_path / "merged-cli" / "audit.json") == written == without_run(merged.to_dict())
    whole = read(where / "api" / "audit.json")  # the merge is the audit one process makes
    for document in (whole, written):
        document["manifest"].pop("shards", None)
    assert written == whole


@pytest.mark.parametrize("flags, keywords, shell, python", [
    (["--split", " "], dict(split=" "), "--split is ' '; expected a non-empty name",
     "The 'split' parameter of ba.scan is str ' '; expected a non-empty name"),
    (["--unimodal", "sound=x.pt"], dict(unimodal_models={"sound": "x.pt"}), "--unimodal names modality 'sound'. Available:",
     "The 'unimodal_models' parameter of ba.scan names modality 'sound'. Available:"),
], ids=["split", "unimodal"])
def test_a_bad_value_is_named_by_its_flag_from_the_shell_and_its_keyword_from_python(shortcut_checkpoint, tmp_path, flags, keywords,
                                                                                      shell, python):
    result = CliRunner().invoke(app, ["scan", str(shortcut_checkpoint), "--adapter", SHORTCUT, *flags, "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and shell in " ".join(result.output.split()), result.output
    with pytest.raises(InputError, match=python.replace(".", r"\.").replace("(", r"\(")):
        ba.scan(shortcut_checkpoint, SHORTCUT, out=tmp_path / "api", **keywords)
    assert not (tmp_path / "cli").exists() and not (tmp_path / "api").exists()


def test_a_bad_value_from_a_settings_file_is_named_by_its_file_and_key(shortcut_checkpoint, tmp_path, monkeypatch):
    (tmp_path / "biasaudit.toml").write_text('[scan]\nsplit = " "\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["scan", str(shortcut_checkpoint), "--adapter", SHORTCUT, "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2
    assert "biasaudit.toml [scan] split is ' '; expected a non-empty name" in " ".join(result.output.split()), result.output
