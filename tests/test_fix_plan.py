"""What shapes a fix run as a whole: the second split audited beside an OOD one (`also_split`), training from scratch,
--scale auto resuming its candidates, and the diagnosis-before-treatment warnings."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

import biasaudit as ba
from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
from biasaudit.errors import BiasAuditError, InputError
from biasaudit.training.fix import fix_model
from biasaudit.training.fix_outputs import run_fix
from biasaudit.scanning.config import ScanConfig
from biasaudit.training import rng_states
from biasaudit.training.diagnosis import TreatmentWarning, treatment_warnings
from biasaudit.training.loop import train
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.methods import make_method

ADAPTER = DigitsCaptionsAdapter()
QUICK = dict(conditions="missing", bootstrap=20, projection="pca")


@pytest.fixture(scope="module")
def baseline():
    return train_baseline(ADAPTER, seed=0, epochs=5)


def audit_like(*, carrier, dominant, signed_gap_ci=(30.0, 45.0), carrier_test=True):
    signed = sum(signed_gap_ci) / 2
    return {"carrier": {"available": carrier_test, "carrier": carrier},
            "summary": {"missing": {"dominant": dominant, "gap": abs(signed), "gap_ci": [0.1, 9.0], "signed_gap": signed,
                                    "signed_gap_ci": list(signed_gap_ci)}}}


def test_reliance_methods_are_warned_off_a_model_whose_carrier_is_not_its_dominant_modality():
    # The measured case: text carries the bias, the model leans on the image; BalGrad strengthened text and the model
    # grew more biased. The user must read that before training, not after.
    found = treatment_warnings("balgrad", audit_like(carrier="text", dominant="image"))
    assert len(found) == 1 and "carried by text while the model relies most on image" in found[0]
    assert "groupdro" in found[0] and found[0].endswith(".")
    for method in ("ogm_ge", "mmpareto"):
        assert treatment_warnings(method, audit_like(carrier="text", dominant="image"))
    # The same methods on a model whose carrier is its dominant modality, and the bias methods on either: no warning.
    assert treatment_warnings("balgrad", audit_like(carrier="text", dominant="text")) == []
    assert treatment_warnings("groupdro", audit_like(carrier="text", dominant="image")) == []
    assert treatment_warnings("ce", audit_like(carrier="text", dominant="image")) == []


def test_a_gap_within_noise_and_a_missing_carrier_are_said_with_their_figures():
    # The Gap |A_a - A_b| has an interval above 0 whatever the data; reliance is read from the signed Gap's.
    no_gap = treatment_warnings("ogm_ge", audit_like(carrier=None, dominant="image", signed_gap_ci=(-2.0, 3.0)))
    assert len(no_gap) == 1 and "is +0.5 points [-2.0, 3.0]" in no_gap[0]
    no_carrier = treatment_warnings("groupdro", audit_like(carrier=None, dominant="image"))
    assert len(no_carrier) == 1 and "no modality that carries a bias" in no_carrier[0]
    # A carrier test that did not run says nothing about the carrier.
    assert treatment_warnings("groupdro", audit_like(carrier=None, dominant="image", carrier_test=False)) == []


def test_fix_warns_before_training_and_records_the_diagnosis(baseline, monkeypatch):
    before = ba.scan(baseline, ADAPTER, split="ood", **QUICK).to_dict()
    before["carrier"] = {"available": True, "carrier": "text"}  # what the carrier test names in the measured case
    before["summary"]["missing"]["dominant"] = "image"
    warned_before_training = []

    def no_training(*args, **kwargs):
        warned_before_training.append(any(issubclass(w.category, TreatmentWarning) for w in caught))
        return []

    monkeypatch.setattr("biasaudit.training.fix.train", no_training)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = fix_model(copy.deepcopy(baseline), ADAPTER, method="balgrad", method_options={}, train_config=TrainConfig(epochs=1),
                            scan_config=ScanConfig(split="ood", conditions="missing", bootstrap_replicates=20, projection="pca"),
                            before=before, also_split=None)
    said = [str(w.message) for w in caught if issubclass(w.category, TreatmentWarning)]
    assert warned_before_training == [True] and len(said) == 1 and "relies most on image" in said[0]
    assert outcome.training["diagnosis"]["warnings"] == said
    assert outcome.training["diagnosis"]["carrier"] == "text" and outcome.training["diagnosis"]["dominant"] == "image"


def test_an_ood_fix_also_audits_test_and_its_verdict_quotes_the_in_distribution_change(baseline, tmp_path):
    # MMDB at s = 32 raised OOD accuracy by 21 points and cost 15 in distribution, which an OOD-only fix never showed.
    checkpoint = tmp_path / "model.pt"
    torch.save(baseline.state_dict(), checkpoint)
    written = run_fix(checkpoint, ADAPTER, method="ce", method_options={}, train_config=TrainConfig(epochs=1),
                      scan_config=ScanConfig(split="ood", conditions="missing", bootstrap_replicates=20, projection="pca"),
                      out_dir=tmp_path / "out")
    also = written.outcome.also
    assert also is not None and also.split == "test"
    assert also.before["manifest"]["config"]["split"] == "test" and also.after["manifest"]["config"]["split"] == "test"
    comparison = json.loads((tmp_path / "out" / "compare.json").read_text())
    full = also.comparison["summary"]["full"]
    assert comparison["also_split"]["split"] == "test" and comparison["also_split"]["full"]["after"] == full["after"]
    assert f"Also on test: Full accuracy {full['before']:.1f} -> {full['after']:.1f}" in comparison["verdict"]
    in_files = json.loads((tmp_path / "out" / "also_compare.json").read_text())
    assert in_files["summary"]["full"]["after"] == full["after"] and in_files["run"]["id"] == comparison["run"]["id"]
    assert set(comparison["run"]["files"]) >= {"also_before.json", "also_after.json", "also_compare.json"}

    # A later run without the second split into the same directory must not leave the first run's files posing as its own.
    run_fix(checkpoint, ADAPTER, method="ce", method_options={}, train_config=TrainConfig(epochs=1),
            scan_config=ScanConfig(split="ood", conditions="missing", bootstrap_replicates=20, projection="pca"),
            out_dir=tmp_path / "out", also_split=None)
    assert not (tmp_path / "out" / "also_compare.json").exists()
    assert "also_split" not in json.loads((tmp_path / "out" / "compare.json").read_text())


def test_an_in_distribution_fix_audits_one_split_and_a_bad_second_split_is_refused_before_any_work(baseline, monkeypatch):
    result = ba.fix(baseline, ADAPTER, method="ce", epochs=1, split="test", **QUICK)
    assert result.also is None and "Also on" not in result.comparison.verdict

    monkeypatch.setattr("biasaudit.training.fix.audit_model", lambda *a, **k: pytest.fail("audited before refusing"))
    with pytest.raises(BiasAuditError, match="Available: train, val, test, ood"):
        ba.fix(baseline, ADAPTER, method="ce", epochs=1, split="ood", also_split="tset", **QUICK)
    with pytest.raises(InputError, match="--also-split ood is the split both audits already take"):
        ba.fix(baseline, ADAPTER, method="ce", epochs=1, split="ood", also_split="ood", **QUICK)


def test_from_scratch_trains_build_model_seeded_by_the_run_and_labels_the_before_audit(baseline):
    result = ba.fix(baseline, ADAPTER, method="ce", epochs=1, seed=2, split="test", from_scratch=True, **QUICK)
    with rng_states.seeded_run(2):
        expected = ADAPTER.build_model()
    train(expected, ADAPTER, make_method("ce"), config=TrainConfig(epochs=1, seed=2))
    for key, value in expected.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[key]), key
    comparison = result.comparison.to_dict()
    assert comparison["before_is"].startswith("the starting checkpoint")
    assert comparison["verdict"].startswith("from scratch, against the starting checkpoint:")
    assert "--from-scratch" in comparison["verdict_sentences"][0]
    assert "--from-scratch" in result.train_log["training"]["start"]


def test_from_scratch_with_a_post_hoc_method_is_refused(baseline):
    with pytest.raises(InputError, match="dfr refits a trained model's final layer"):
        ba.fix(baseline, ADAPTER, method="dfr", from_scratch=True, **QUICK)


class Interrupt(Exception):
    pass


def interrupted_in(stage: str, step: int):
    def progress(name, done, total, status=None):
        if name == stage and done == step:
            raise Interrupt
    return progress


def test_scale_auto_resumes_each_candidate_from_its_own_state(baseline, tmp_path):
    config = TrainConfig(epochs=2)
    scan = ScanConfig(split="test", conditions="missing", bootstrap_replicates=20, projection="pca")
    straight = fix_model(copy.deepcopy(baseline), ADAPTER, method="mmdb", method_options={"scale": "auto"}, train_config=config,
                         scan_config=scan, state_dir=tmp_path / "a")
    steps_per_epoch = -(-len(ADAPTER.split_data("train")) // config.batch_size)
    with pytest.raises(Interrupt):  # in the third candidate's second epoch
        fix_model(copy.deepcopy(baseline), ADAPTER, method="mmdb", method_options={"scale": "auto"}, train_config=config,
                  scan_config=scan, state_dir=tmp_path / "b", progress=interrupted_in("scale 4", steps_per_epoch + 2))
    with pytest.raises(BiasAuditError, match="found no training state of any scale auto candidate"):
        fix_model(copy.deepcopy(baseline), ADAPTER, method="mmdb", method_options={"scale": "auto"}, train_config=config,
                  scan_config=scan, state_dir=tmp_path / "c", resume=True)
    resumed = fix_model(copy.deepcopy(baseline), ADAPTER, method="mmdb", method_options={"scale": "auto"}, train_config=config,
                        scan_config=scan, state_dir=tmp_path / "b", resume=True)
    assert resumed.training["option_selection"] == straight.training["option_selection"]
    assert resumed.steps == straight.steps
    assert resumed.after["summary"] == straight.after["summary"]


def test_from_scratch_with_discovered_bias_is_refused_before_any_audit(baseline, monkeypatch):
    # Without a bias_key the groups are k-means clusters of a branch's features: of a random model, after re-initialising.
    class NoBiasKey(DigitsCaptionsAdapter):
        bias_key = None

    monkeypatch.setattr("biasaudit.training.fix.audit_model", lambda *a, **k: pytest.fail("audited before refusing"))
    with pytest.raises(InputError, match="would cluster a random model's features"):
        fix_model(copy.deepcopy(baseline), NoBiasKey(), method="groupdro", method_options={}, train_config=TrainConfig(epochs=1),
                  scan_config=ScanConfig(split="test", conditions="missing", bootstrap_replicates=20, projection="pca"),
                  also_split=None, from_scratch=True)


def test_ba_fix_with_no_second_split_from_python(baseline):
    result = ba.fix(baseline, ADAPTER, method="ce", epochs=1, split="ood", also_split=None, **QUICK)
    assert result.also is None and "Also on" not in result.comparison.verdict
