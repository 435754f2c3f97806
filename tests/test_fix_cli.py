"""`biasaudit fix` through the real console script on the demo: every output is written, the fixed
model is a drop-in state dict that `scan` loads with the same adapter, and mistakes exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline

SCRIPT = Path(sys.executable).parent / "biasaudit"
ADAPTER = f"{Path(__file__).parents[1] / 'examples' / 'digits_captions_adapter.py'}:adapter"
FAST = ["--epochs", "2", "--conditions", "missing", "--split", "ood"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("baseline") / "baseline.pt"
    torch.save(train_baseline(DigitsCaptionsAdapter(), seed=0, epochs=5).state_dict(), path)
    return path


@pytest.mark.parametrize("method", ["ce", "mmdb", "balgrad"])
def test_fix_writes_every_output_and_a_drop_in_checkpoint(method, checkpoint, tmp_path):
    original = checkpoint.read_bytes()
    out = tmp_path / method
    result = run("fix", str(checkpoint), "--adapter", ADAPTER, "--method", method, "--out", str(out), *FAST)
    assert result.returncode == 0, result.stderr
    for name in ("model.pt", "before.json", "after.json", "compare.json", "train_log.json", "after.html", "compare.html"):
        assert (out / name).is_file(), name
    assert checkpoint.read_bytes() == original, "the input checkpoint must never be modified"
    before, after = (json.loads((out / f"{n}.json").read_text()) for n in ("before", "after"))
    assert before["manifest"]["config"] == after["manifest"]["config"]
    assert after["manifest"]["training"]["method"] == method
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] and log["training"]["settings"] is not None
    compare = json.loads((out / "compare.json").read_text())
    assert compare["summary"]["full"]["after"] == after["summary"]["full"]["accuracy"]
    assert compare["paired"] is True and compare["summary"]["missing"]["gap"]["delta_ci"] is not None
    page = (out / "compare.html").read_text()
    for section in ("verdict", "summary", "conditions", "jsd", "embeddings", "training", "settings"):
        assert f'id="{section}"' in page, section
    assert "http://" not in page and "https://" not in page
    if method == "balgrad":
        assert "was negative (a conflict, then projected away)" in page
    # Re-rendered from the files alone: the files keep the replicate counts, so the same deltas come back
    # with the very same paired intervals.
    again = run("compare", str(out / "before.json"), str(out / "after.json"), "--train-log", str(out / "train_log.json"),
                "--out", str(tmp_path / "again"))
    assert again.returncode == 0, again.stderr
    redone = json.loads((tmp_path / "again" / "compare.json").read_text())
    assert [r["delta"] for r in redone["conditions"]] == [r["delta"] for r in compare["conditions"]]
    assert redone["paired"] is True and redone["unpaired_reason"] is None
    assert [r["delta_ci"] for r in redone["conditions"]] == [r["delta_ci"] for r in compare["conditions"]]
    assert redone["summary"]["missing"] == compare["summary"]["missing"]
    rescan = run("scan", str(out / "model.pt"), "--adapter", ADAPTER, "--conditions", "missing", "--split", "ood",
                 "--out", str(tmp_path / "rescan"), "--projection", "pca")
    assert rescan.returncode == 0, rescan.stderr
    rescanned = json.loads((tmp_path / "rescan" / "audit.json").read_text())
    assert rescanned["summary"]["full"]["accuracy"] == after["summary"]["full"]["accuracy"]


def test_unknown_method_exits_2_and_lists_the_available_ones(checkpoint, tmp_path):
    result = run("fix", str(checkpoint), "--adapter", ADAPTER, "--method", "magic", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "'magic' is not one of 'ce', 'mmdb', 'balgrad'" in " ".join(result.stderr.replace("│", " ").split())
    assert not (tmp_path / "x").exists()


def test_resume_without_a_previous_run_exits_2(checkpoint, tmp_path):
    result = run("fix", str(checkpoint), "--adapter", ADAPTER, "--method", "ce", "--resume", "--out", str(tmp_path / "y"), *FAST)
    assert result.returncode == 2 and "--resume found no training state" in result.stderr
    assert not (tmp_path / "y").exists(), "refused before the before-audit: nothing may be written"


def test_compare_refuses_audits_of_different_splits_with_exit_2(checkpoint, tmp_path):
    for split in ("test", "ood"):
        result = run("scan", str(checkpoint), "--adapter", ADAPTER, "--conditions", "missing", "--split", split,
                     "--projection", "pca", "--bootstrap", "50", "--out", str(tmp_path / split))
        assert result.returncode == 0, result.stderr
    result = run("compare", str(tmp_path / "test" / "audit.json"), str(tmp_path / "ood" / "audit.json"), "--out", str(tmp_path / "c"))
    assert result.returncode == 2 and "differ in split" in result.stderr
    assert not (tmp_path / "c").exists()
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = run("compare", str(broken), str(tmp_path / "ood" / "audit.json"), "--out", str(tmp_path / "d"))
    assert result.returncode == 2 and "broken.json is not valid JSON" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--bias", "kmeans", "--bias-modality", "audio"], "no entry for the dominant modality 'audio'"),
    (["--bias", "guess"], "'--bias': Value error, 'guess' is not one of 'auto', 'key', 'kmeans'"),
    (["--head-mode", "wide"], "'--head-mode': Value error, 'wide' is not one of 'shared_zero', 'ogm_split', 'separate'"),
    (["--scale", "abc"], "--scale 'abc' is neither 'auto' nor a number."),
    (["--option", "scale"], "--option is 'scale'; expected NAME=VALUE"),
    (["--option", "widht=3"], "does not take these options"),
])
def test_bad_method_options_exit_2_before_any_audit_or_training(args, message, checkpoint, tmp_path):
    method = "balgrad" if "--head-mode" in args else "mmdb"
    result = run("fix", str(checkpoint), "--adapter", ADAPTER, "--method", method, "--out", str(tmp_path / "z"), *args, *FAST)
    assert result.returncode == 2 and message in " ".join(result.stderr.replace("│", " ").split()), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "z").exists()


def test_option_sets_any_option_of_the_method_as_python_options_would(checkpoint, tmp_path):
    """A method added to the registry has no flags of its own: --option NAME=VALUE reaches it as options={...} would
    (numbers as numbers, words as words), and overrides the method's own flag."""
    result = run("fix", str(checkpoint), "--adapter", ADAPTER, "--method", "ogm_ge", "--alpha", "0.3", "--option", "alpha=0.55",
                 "--option", "ge=false", "--out", str(tmp_path / "o"), "--epochs", "1", "--conditions", "missing", "--split", "ood",
                 "--bootstrap", "50")
    assert result.returncode == 0, result.stderr
    settings = json.loads((tmp_path / "o" / "train_log.json").read_text())["training"]["settings"]
    assert settings["alpha"] == 0.55 and settings["ge"] is False


def test_a_diverged_training_writes_no_model_and_leaves_an_earlier_run_as_it_was(checkpoint, tmp_path):
    """--lr inf (refused up front now) turned every weight into NaN: that landed in model.pt beside the earlier run's
    after.json, and a gate passed on the stale file. A learning rate float32 holds but training cannot survive still diverges. Now nothing of the run's results is written and the sentence says why."""
    out = tmp_path / "fixed"
    out.mkdir()
    earlier = {"model.pt": b"earlier model", "after.json": b'{"earlier": true}'}
    for name, content in earlier.items():
        (out / name).write_bytes(content)
    result = run("fix", str(checkpoint), "--adapter", ADAPTER, "--method", "ce", "--lr", "1e30", "--out", str(out), *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "Training diverged" in " ".join(result.stderr.split())
    assert {p.name for p in out.iterdir()} == {"model.pt", "after.json", "state"}
    assert all((out / name).read_bytes() == content for name, content in earlier.items())
