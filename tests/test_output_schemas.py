"""compare.json, train_log.json and the `gate --json` verdict fit the schemas published inside the package (issue 11,
class 4), and a damaged train_log.json given to `compare --train-log` is exit 2 naming the file and the field, never
a traceback (3) and never a comparison (0).

In-process (typer's runner): one real `fix` run on the shortcut fixture gives every file, in seconds."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import torch
from typer.testing import CliRunner

from biasaudit.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
ADAPTER = f"{FIXTURES / 'shortcut_adapter.py'}:TrainableShortcutAdapter"  # ShortcutModel itself has nothing to train
SCHEMAS = ("audit", "compare", "gate", "train_log")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def schema(name: str) -> dict:
    return json.loads(resources.files("biasaudit").joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8"))


def assert_fits(data, name: str) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in jsonschema.Draft202012Validator(schema(name)).iter_errors(data)]
    assert not errors, f"{name}: " + "; ".join(errors[:5])


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def fixed(tmp_path_factory) -> Path:
    """The output directory of `fix --method ce --epochs 1` on the shortcut fixture."""
    root = tmp_path_factory.mktemp("schemas")
    sys.path.insert(0, str(FIXTURES))
    try:
        import shortcut_adapter
    finally:
        sys.path.pop(0)
    checkpoint = root / "model.pt"
    torch.save(shortcut_adapter.ShortcutModel().state_dict(), checkpoint)  # same keys as the trainable model
    out = root / "fixed"
    result = run("fix", checkpoint, "--adapter", ADAPTER, "--method", "ce", "--epochs", "1", "--scan-projection", "pca",
                 "--bootstrap", "50", "--out", out)
    assert result.exit_code == 0, result.output[-2000:]
    return out


@pytest.mark.parametrize("name", SCHEMAS)
def test_each_published_schema_is_a_valid_draft_2020_12_schema(name):
    document = schema(name)
    jsonschema.Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema" and document["$id"] and document["title"]


def test_fix_writes_files_that_fit_their_schemas(fixed):
    assert_fits(json.loads((fixed / "compare.json").read_text()), "compare")
    assert_fits(json.loads((fixed / "train_log.json").read_text()), "train_log")
    for audit in ("before.json", "after.json"):
        assert_fits(json.loads((fixed / audit).read_text()), "audit")


def test_compare_writes_a_compare_json_that_fits_its_schema(fixed, tmp_path):
    result = run("compare", fixed / "before.json", fixed / "after.json", "--train-log", fixed / "train_log.json", "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output[-2000:]
    comparison = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert_fits(comparison, "compare")
    assert comparison["paired"] is True and comparison["bias"]["worst_group"], "the fixture pairs and has groups: every section is filled"


BIAS_RULES = ["--max-worst-group-drop", "1", "--max-bias-follow-increase", "1", "--max-jsd-drop", "0.1", "--max-gap-increase", "1"]
GATES = {"PASS alone": ([], ["--max-gap", "missing=90", "--min-accuracy", "full=50"], "PASS"),
         "FAIL alone": ([], ["--min-worst-group", "full=50", "--max-gap", "1"], "FAIL"),
         "ERROR alone": ([], ["--min-worst-group", "full=50"], "ERROR"),  # on an audit without group accuracies
         "PASS with baseline": (["--baseline"], [*BIAS_RULES, "--significant"], "PASS"),
         "FAIL with baseline": (["--baseline"], [*BIAS_RULES, "--min-worst-group", "full=50"], "FAIL")}


@pytest.mark.parametrize("case", list(GATES))
def test_gate_json_fits_its_schema(case, fixed, tmp_path):
    baseline, rules, status = GATES[case]
    extra = [*baseline, fixed / "before.json"] if baseline else []
    current = fixed / "after.json"
    if status == "ERROR":  # an adapter without a bias attribute gives an audit without groups: that rule cannot be evaluated
        audit = json.loads(current.read_text())
        del audit["groups"]
        current = tmp_path / "after.json"
        current.write_text(json.dumps(audit))
    result = run("gate", current, *extra, *rules, "--json")
    verdict = json.loads(result.stdout)
    assert_fits(verdict, "gate")
    assert verdict["status"] == status and result.exit_code == verdict["exit_code"], (case, result.output[-1500:])
    assert (verdict["baseline"] is not None) == bool(baseline)
    assert (verdict["changes"] is not None) == bool(baseline)  # the largest changes, whenever there is a baseline


# --- damaged train logs -----------------------------------------------------------------------------------------------

PATHS = [("training",), ("training", "method"), ("training", "settings"), ("training", "config"), ("training", "config", "epochs"),
         ("training", "config", "lr"), ("training", "option_selection"), ("training", "wall_time_s"), ("training", "source_checkpoint"),
         ("steps",), ("steps", 0, "step"), ("steps", 1, "epoch")]
# A step's loss is optional but never a string; a step may be absent but never a number.
CASES = [(path, how) for path in PATHS for how in ("delete", "retyped", "object")] + \
        [(path, how) for path in (("steps", 0), ("steps", 0, "loss")) for how in ("retyped", "object")]


def compare_with_log(fixed: Path, log_path: Path, out: Path):
    return run("compare", fixed / "before.json", fixed / "after.json", "--train-log", log_path, "--out", out)


def test_every_damaged_train_log_is_exit_2_naming_the_file_and_the_field(fixed, tmp_path, damaged):
    """One test over all cases (each is a fraction of a second): exit 2, one sentence, the file and the field."""
    log = json.loads((fixed / "train_log.json").read_text())
    failures = []
    for path, how in CASES:
        bad = tmp_path / "bad_log.json"
        bad.write_text(json.dumps(damaged(log, path, how)))
        result = compare_with_log(fixed, bad, tmp_path / "cmp")
        text = one_line(result.stderr)
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        if result.exit_code != 2 or str(bad) not in text or field not in text or "Traceback" in result.output or \
                len(result.stderr.strip().splitlines()) != 1:
            failures.append(f"{how}:{field}: exit {result.exit_code}: {text[-300:]}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "cmp").exists(), "nothing is written for a damaged input"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_in_a_train_log_is_exit_2_naming_the_field(constant, fixed, tmp_path):
    log = json.loads((fixed / "train_log.json").read_text())
    log["steps"][1]["loss"] = float(constant.lower().replace("infinity", "inf"))
    bad = tmp_path / "nan_log.json"
    bad.write_text(json.dumps(log))  # json writes NaN and Infinity, which are not JSON
    result = compare_with_log(fixed, bad, tmp_path / "cmp")
    text = one_line(result.stderr)
    assert result.exit_code == 2 and f"Training log {bad} is damaged at steps[1].loss: {constant} is not a JSON number" in text, text


def test_a_foreign_run_stamp_in_a_train_log_is_named(fixed, tmp_path):
    log = json.loads((fixed / "train_log.json").read_text())
    log["run"] = {"id": 5, "files": ["train_log.json"], "sha256": {}}
    bad = tmp_path / "stamp_log.json"
    bad.write_text(json.dumps(log))
    result = compare_with_log(fixed, bad, tmp_path / "cmp")
    assert result.exit_code == 2 and f"Training log {bad} is damaged at run.id" in one_line(result.stderr), result.output[-800:]


@pytest.mark.parametrize("what", ["a directory", "missing", "not JSON", "an array"])
def test_a_train_log_that_is_no_log_is_exit_2_in_one_sentence(what, fixed, tmp_path):
    target = tmp_path / "log.json"
    words = {"a directory": "is a directory", "missing": "does not exist", "not JSON": "is not valid JSON",
             "an array": "is damaged at (the top level)"}[what]
    if what == "a directory":
        target.mkdir()
    elif what == "not JSON":
        target.write_text("{\"training\": ")
    elif what == "an array":
        target.write_text("[]")
    result = compare_with_log(fixed, target, tmp_path / "cmp")
    text = one_line(result.stderr)
    assert result.exit_code == 2 and f"Training log {target} {words}" in text and "Traceback" not in result.output, text


# --- audits that fit no reader ----------------------------------------------------------------------------------------

EXAMPLE = FIXTURES / "audit_example.json"
HOLES = {"summary.missing.flip_rates": lambda a: a["summary"]["missing"].pop("flip_rates"),
         "summary.missing.gap": lambda a: a["summary"]["missing"].__setitem__("gap", None),
         "summary.full.accuracy": lambda a: a["summary"]["full"].__setitem__("accuracy", None),
         "jsd": lambda a: a.pop("jsd"),
         "manifest.config.split": lambda a: a["manifest"]["config"].pop("split"),
         "summary.noisy.gap_ci[1]": lambda a: a["summary"]["noisy"]["gap_ci"].__setitem__(1, "28.1"),
         "jsd.weighted_mean": lambda a: a["jsd"].__setitem__("weighted_mean", "0.18"),
         "groups.conditions.full.worst_group": lambda a: a["groups"]["conditions"]["full"].__setitem__("worst_group", "12.5"),
         "carrier.modalities.text.bias_swap.excess_follow_rate":
             lambda a: a["carrier"]["modalities"]["text"]["bias_swap"].__setitem__("excess_follow_rate", [0.5]),
         "ceilings.implied_gap": lambda a: a["ceilings"].__setitem__("implied_gap", "30")}


@pytest.mark.parametrize("field", list(HOLES))
def test_an_audit_that_compare_or_gate_would_crash_on_is_exit_2_naming_the_field(field, tmp_path):
    """Each of these once passed the schema and then crashed compare or gate (exit 3): the schema now requires what
    they read."""
    audit = json.loads(EXAMPLE.read_text())
    HOLES[field](audit)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(audit))
    for args in (["compare", EXAMPLE, bad, "--out", tmp_path / "cmp"], ["gate", bad, "--baseline", EXAMPLE, "--max-gap-increase", "1"]):
        result = run(*args)
        text = one_line(result.stderr)
        assert result.exit_code == 2 and f"Audit file {bad} is damaged at {field}" in text, (args[0], result.exit_code, text[-400:])
