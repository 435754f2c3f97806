"""`fix --feature-cache`: a fix whose model has a frozen encoder gives the very weights with the cache as without it and
records what was cached; what cannot be cached is refused with one sentence before any audit ("on"), and a cache
directory that cannot be used is refused before any work, with nothing written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import biasaudit as ba
from biasaudit.cli import app
from biasaudit.datasets.demo_model import DigitsCaptionsAdapter
from biasaudit.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from frozen_encoder import FrozenEncoderAdapter  # noqa: E402

sys.path.pop(0)

FAST = {"epochs": 2, "batch_size": 16, "split": "test", "conditions": "missing", "bootstrap": 20, "projection": "pca",
        "also_split": None}


def _fixed(adapter, mode: str):
    model = adapter.build_model()
    return ba.fix(model, adapter, method="balgrad", feature_cache=mode, **FAST)


def test_a_fix_with_the_feature_cache_gives_the_weights_of_one_without_and_says_what_it_cached():
    adapter = FrozenEncoderAdapter(n=96)
    cached, plain = _fixed(adapter, "on"), _fixed(adapter, "off")
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, cached.model.state_dict()[key]), f"{key} differs with the cache"
    record = cached.train_log["training"]["feature_cache"]
    assert record["mode"] == "on" and "image.encoder" in record["note"], record
    assert plain.train_log["training"]["feature_cache"] == {"mode": "off", "note": plain.train_log["training"]["feature_cache"]["note"]}
    assert "off" in plain.train_log["training"]["feature_cache"]["note"]


def test_the_cache_on_for_data_not_declared_deterministic_is_refused_before_the_audit(monkeypatch):
    class Augmented(FrozenEncoderAdapter):
        deterministic_data = False

    def audited(*args, **kwargs):
        raise AssertionError("the before-audit ran before the refusal")

    monkeypatch.setattr("biasaudit.training.fix.audit_model", audited)
    with pytest.raises(InputError, match="does not declare deterministic_data = True"):
        _fixed(Augmented(n=48), "on")
    with pytest.raises(InputError, match="no part of the model has all its parameters frozen"):
        ba.fix(DigitsCaptionsAdapter().build_model(), DigitsCaptionsAdapter(), method="ce", feature_cache="on", **FAST)


def test_a_cache_dir_that_is_a_file_is_refused_before_any_work_and_nothing_is_written(tmp_path):
    checkpoint, taken = tmp_path / "model.pt", tmp_path / "taken"
    torch.save(FrozenEncoderAdapter().build_model().state_dict(), checkpoint)
    taken.write_text("mine")
    result = CliRunner().invoke(app, ["fix", str(checkpoint), "--adapter", str(FIXTURES / "frozen_encoder.py") + ":adapter",
                                      "--method", "ce", "--cache-dir", str(taken), "--out", str(tmp_path / "out")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "taken" in said and "Traceback" not in result.output
    assert taken.read_text() == "mine" and not (tmp_path / "out").exists()
