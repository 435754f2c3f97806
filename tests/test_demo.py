"""`biasaudit demo` end to end through the console script, and the calibration the issue asks of it: a
newcomer must see a plainly text-biased baseline. If the dataset, the model or the scan drifted so the
demo no longer shows the bias it is meant to teach, these fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "biasaudit"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    result = subprocess.run([str(SCRIPT), "demo", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out / name) for name in ("model.pt", "audit.json", "audit.html")]
    return out


def test_demo_audits_ood_and_names_text_by_flip_rate_with_low_jsd(demo_dir):
    audit = json.loads((demo_dir / "audit.json").read_text())
    assert audit["dataset"]["split"] == "ood"
    missing = audit["summary"]["missing"]
    assert missing["dominant"] == "text", missing["flip_rates"]
    assert audit["jsd"]["available"] and audit["jsd"]["bias_source"] == "bias_key"
    assert audit["jsd"]["mean"] is not None and audit["jsd"]["mean"] < 0.5
    assert audit["embeddings"]["available"] and audit["gradient_conflict"]["available"]


def test_demo_checkpoint_on_test_split_shows_a_text_gap_of_at_least_20_points(demo_dir, tmp_path):
    adapter = Path(__file__).parents[1] / "examples" / "digits_captions_adapter.py"
    out = tmp_path / "test-audit"
    result = subprocess.run([str(SCRIPT), "scan", str(demo_dir / "model.pt"), "--adapter", f"{adapter}:adapter",
                             "--split", "test", "--out", str(out), "--projection", "pca", "--bootstrap", "200"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    audit = json.loads((out / "audit.json").read_text())
    assert audit["summary"]["full"]["accuracy"] > 85
    missing = audit["summary"]["missing"]
    assert missing["dominant"] == "text" and missing["gap"] >= 20, missing
    assert missing["scores"]["text"] < missing["scores"]["image"]


def test_training_the_demo_model_leaves_the_callers_random_generators_where_they_were():
    """A notebook that seeds its own torch generator and trains the demo model must draw the same numbers after it as
    without it: a library that reseeds the global generator silently changes the user's later results."""
    import torch

    from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = train_baseline(DigitsCaptionsAdapter(), epochs=1, seed=5)
    assert torch.equal(torch.rand(3), expected)
    again = train_baseline(DigitsCaptionsAdapter(), epochs=1, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))
