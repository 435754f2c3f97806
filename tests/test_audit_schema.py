"""Audits are read through one published schema (issue 11, class 4): a damaged audit.json (a field deleted, a
number turned into a string, NaN written in) is exit 2 naming the file and the field in `report`, `compare` and
`gate`, never a traceback (3) and never a verdict (0 PASS or 1 FAIL, which a CI reads as the model's)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biasaudit.cli import app

EXAMPLE = Path(__file__).parent / "fixtures" / "audit_example.json"

# Required leaves of the schema: each damage below must be caught whichever of them it hits.
PATHS = [("schema_version",), ("manifest",), ("manifest", "seed"), ("manifest", "config"), ("dataset",), ("dataset", "split"),
         ("dataset", "n"), ("dataset", "num_classes"), ("dataset", "modalities"), ("summary",), ("summary", "full"),
         ("summary", "full", "accuracy"), ("summary", "missing", "gap"), ("summary", "missing", "scores"), ("conditions",),
         ("conditions", 0, "name"), ("conditions", 1, "accuracy"), ("conditions", 2, "flip_rate"), ("conditions", 3, "accuracy_ci")]


CASES = [(path, how) for path in PATHS for how in ("delete", "retyped", "object")]
random.Random(0).shuffle(CASES)


@pytest.mark.parametrize("path, how", CASES, ids=[f"{how}:{'.'.join(map(str, path))}" for path, how in CASES])
def test_a_damaged_audit_is_exit_2_naming_the_file_in_report_compare_and_gate(path, how, tmp_path, damaged):
    audit = json.loads(EXAMPLE.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(damaged(audit, path, how)))
    runner = CliRunner()
    for args in (["report", bad, "--out", tmp_path / "page.html"], ["compare", EXAMPLE, bad, "--out", tmp_path / "cmp"],
                 ["gate", bad, "--max-gap", "missing=90"]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, (args[0], result.exit_code, result.output[-800:])
        assert str(bad) in " ".join(result.stderr.split()) and "Traceback" not in result.output
    assert not (tmp_path / "page.html").exists() and not (tmp_path / "cmp").exists()


def test_nan_written_into_an_audit_is_refused(tmp_path):
    text = EXAMPLE.read_text()
    audit = json.loads(text)
    audit["summary"]["full"]["accuracy"] = float("nan")
    bad = tmp_path / "nan.json"
    bad.write_text(json.dumps(audit))  # json writes NaN, which is not JSON
    result = CliRunner().invoke(app, ["gate", str(bad), "--max-gap", "missing=90"])
    assert result.exit_code == 2 and "NaN is not a JSON number" in " ".join(result.stderr.split())


def test_the_error_names_the_field():
    audit = json.loads(EXAMPLE.read_text())
    audit["conditions"][1]["accuracy"] = "12.5"
    from biasaudit.errors import InputError
    from biasaudit.results import check_against_schema

    with pytest.raises(InputError, match=r"is damaged at conditions\[1\]\.accuracy: '12\.5' does not fit the published schema"):
        check_against_schema(audit, "audit", source="Audit file x.json")
