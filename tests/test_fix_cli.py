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
    for name in ("model.pt", "before.json", "after.json", "compare.json", "train_log.json", "after.html"):
        assert (out / name).is_file(), name
    assert checkpoint.read_bytes() == original, "the input checkpoint must never be modified"
    before, after = (json.loads((out / f"{n}.json").read_text()) for n in ("before", "after"))
    assert before["manifest"]["config"] == after["manifest"]["config"]
    assert after["manifest"]["training"]["method"] == method
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] and log["training"]["settings"] is not None
    compare = json.loads((out / "compare.json").read_text())
    assert compare["summary"]["full"]["after"] == after["summary"]["full"]["accuracy"]
    rescan = run("scan", str(out / "model.pt"), "--adapter", ADAPTER, "--conditions", "missing", "--split", "ood",
                 "--out", str(tmp_path / "rescan"), "--projection", "pca")
    assert rescan.returncode == 0, rescan.stderr
    rescanned = json.loads((tmp_path / "rescan" / "audit.json").read_text())
    assert rescanned["summary"]["full"]["accuracy"] == after["summary"]["full"]["accuracy"]


def test_unknown_method_exits_2_and_lists_the_available_ones(checkpoint, tmp_path):
    result = run("fix", str(checkpoint), "--adapter", ADAPTER, "--method", "magic", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "Available: ce, mmdb, balgrad" in result.stderr
    assert not (tmp_path / "x").exists()


def test_resume_without_a_previous_run_exits_2(checkpoint, tmp_path):
    result = run("fix", str(checkpoint), "--adapter", ADAPTER, "--method", "ce", "--resume", "--out", str(tmp_path / "y"), *FAST)
    assert result.returncode == 2 and "--resume found no training state" in result.stderr
