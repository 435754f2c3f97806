"""The route examples (examples/loader_adapter.py, examples/hf_adapter.py) end to end, as their docstrings tell a
user to run them: `python examples/X.py model.pt` trains and saves a checkpoint, then the real console script
scans it with `--adapter examples/X.py:adapter`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPT = Path(sys.executable).parent / "biasaudit"
FAST = ["--conditions", "missing", "--bootstrap", "50", "--projection", "pca", "--gradient-batches", "1"]
ROUTES = {
    "loader_adapter.py": {"image", "tabular"},
    "hf_adapter.py": {"image", "text"},
}


@pytest.mark.parametrize("example", list(ROUTES))
def test_example_trains_a_checkpoint_that_biasaudit_scan_audits(example, tmp_path):
    source = EXAMPLES / example
    checkpoint = tmp_path / "model.pt"
    trained = subprocess.run([sys.executable, str(source), str(checkpoint)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert trained.returncode == 0 and checkpoint.is_file(), trained.stderr
    out = tmp_path / "audit"
    scanned = subprocess.run([str(SCRIPT), "scan", str(checkpoint), "--adapter", f"{source}:adapter", "--out", str(out), *FAST],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert scanned.returncode == 0, scanned.stderr
    assert scanned.stdout.split() == [str(out / "audit.json"), str(out / "audit.html")]
    audit = json.loads((out / "audit.json").read_text())
    rows = {row["name"]: row for row in audit["conditions"]}
    assert set(rows) == {"full"} | {f"missing:{m}" for m in ROUTES[example]}
    assert rows["full"]["accuracy"] > 60  # trained (chance is 33%): the checkpoint was loaded, not a fresh model
    assert audit["embeddings"]["available"] is True  # the classifier path resolved
    assert audit["manifest"]["adapter"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
