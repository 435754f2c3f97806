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


def test_what_the_cache_on_cannot_serve_is_refused_before_the_audit(monkeypatch):
    class Augmented(FrozenEncoderAdapter):
        deterministic_data = False

    def audited(*args, **kwargs):
        raise AssertionError("the before-audit ran before the refusal")

    monkeypatch.setattr("biasaudit.training.fix.audit_model", audited)
    with pytest.raises(InputError, match="does not declare deterministic_data = True"):
        _fixed(Augmented(n=48), "on")
    with pytest.raises(InputError, match="'image.encoder' receives gradient"):  # a trainable stem before it
        _fixed(FrozenEncoderAdapter(n=48, stem=True), "on")
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


def test_runs_sharing_a_cache_dir_keep_their_files_apart_and_remove_them(tmp_path):
    from biasaudit.training.feature_cache import CacheSettings
    from biasaudit.training.loop import train
    from biasaudit.training.methods import make_method
    from biasaudit.training.train_config import TrainConfig

    adapter, shared = FrozenEncoderAdapter(n=48), tmp_path / "cache"
    other = shared / "run-another"  # a folder of another run's, which this run must not touch
    other.mkdir(parents=True)
    (other / "image.encoder-train.bin").write_bytes(b"theirs")
    reports: list[dict] = []
    train(adapter.build_model(), adapter, make_method("ce"), config=TrainConfig(epochs=2, batch_size=16),
          cache=CacheSettings(mode="on", directory=shared), cache_report=reports.append)
    files = [Path(f) for f in reports[0]["files"]]
    assert files and all(f.parent.parent == shared and f.parent != other for f in files), files
    assert not files[0].parent.exists(), "the run's cache folder outlived the run"
    assert (other / "image.encoder-train.bin").read_bytes() == b"theirs"


def test_a_16_bit_run_is_not_cached_and_refused_with_the_cache_on():
    from biasaudit.training.feature_cache import CacheSettings
    from biasaudit.training.loop import train
    from biasaudit.training.methods import make_method
    from biasaudit.training.train_config import TrainConfig

    adapter = FrozenEncoderAdapter(n=48)
    config = TrainConfig(epochs=1, batch_size=16, precision="bf16")
    with pytest.raises(InputError, match="computes in bf16, so the cache would change its weights"):
        train(adapter.build_model(), adapter, make_method("ce"), config=config, cache=CacheSettings(mode="on"))
    reports: list[dict] = []
    train(adapter.build_model(), adapter, make_method("ce"), config=config, cache=CacheSettings(), cache_report=reports.append)
    assert reports[0]["note"].startswith("nothing cached: this run computes in bf16")


def test_a_cache_over_its_bound_is_refused_before_the_audit_and_leaves_no_folder(monkeypatch, tmp_path):
    def audited(*args, **kwargs):
        raise AssertionError("the before-audit ran before the refusal")

    monkeypatch.setattr("biasaudit.training.fix.audit_model", audited)
    adapter, cache = FrozenEncoderAdapter(n=48), tmp_path / "cache"
    with pytest.raises(InputError, match=r"would take .* more than its bound of 1 KiB \(--cache-max-gb\)"):
        ba.fix(adapter.build_model(), adapter, method="ce", feature_cache="on", cache_dir=cache, cache_max_gb=2**-20, **FAST)
    assert not cache.exists()
    # Declined inside a run (auto): the run's folder, and the directory it made, are gone afterwards.
    from biasaudit.training.feature_cache import CacheSettings
    from biasaudit.training.loop import train
    from biasaudit.training.methods import make_method
    from biasaudit.training.train_config import TrainConfig

    reports: list[dict] = []
    train(adapter.build_model(), adapter, make_method("ce"), config=TrainConfig(epochs=1, batch_size=16),
          cache=CacheSettings(directory=cache, max_bytes=1024), cache_report=reports.append)
    assert reports[0]["note"].startswith("nothing cached: the outputs of the frozen modules would take")
    assert not cache.exists(), "a declined cache left its folder behind"
