"""The public Python API (issue 12): `ba.scan` returns a typed, frozen Audit that reads back from its own JSON, equals
what the command line writes, and leaves the caller's model and random generators as they were. If any of this broke,
a notebook user would get numbers that differ from the CI's, or a training script's randomness would shift."""

from __future__ import annotations

import dataclasses
import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import biasaudit as ba
from biasaudit.cli import app
from biasaudit.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures"
SHORTCUT = f"{FIXTURES / 'shortcut_adapter.py'}:ShortcutAdapter"
FAST = dict(bootstrap=50, projection="pca", gradient_batches=1, batch_size=32, min_wrong=1)
FAST_FLAGS = ["--bootstrap", "50", "--projection", "pca", "--gradient-batches", "1", "--batch-size", "32", "--min-wrong", "1"]


def _shortcut_module():
    spec = importlib.util.spec_from_file_location("shortcut_for_api", FIXTURES / "shortcut_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scanned(shortcut_checkpoint):
    module = _shortcut_module()
    adapter = module.ShortcutAdapter()
    model = adapter.build_model()
    model.load_state_dict(torch.load(shortcut_checkpoint, weights_only=True))
    return ba.scan(model, adapter, **FAST), model


def test_scan_returns_a_typed_audit_whose_attributes_are_the_documents_figures(scanned):
    audit, _ = scanned
    assert isinstance(audit, ba.Audit)
    missing = audit.document["summary"]["missing"]
    assert audit.summary.missing.gap == missing["gap"] and audit.summary.missing.gap_ci == tuple(missing["gap_ci"])
    assert audit.summary.missing.dominant == missing["dominant"] is not None
    row = next(r for r in audit.document["conditions"] if r["name"] == "missing:content")
    assert audit.condition("missing:content").accuracy == row["accuracy"]
    assert audit.condition("missing:content").accuracy_ci == tuple(row["accuracy_ci"])
    assert audit.summary.accuracy == audit.condition("full").accuracy


def test_an_audit_is_frozen_and_its_document_read_only(scanned):
    audit, _ = scanned
    with pytest.raises(dataclasses.FrozenInstanceError):
        audit.summary = None
    with pytest.raises(TypeError):
        audit.document["summary"] = {}
    copy = audit.to_dict()
    copy["summary"] = {}
    assert audit.document["summary"]["missing"]["gap"] == audit.summary.missing.gap


def test_an_unknown_condition_names_the_available_ones(scanned):
    with pytest.raises(InputError, match=r"no condition 'missing:sound'\. Available: full, missing:bias_cue"):
        scanned[0].condition("missing:sound")


def test_to_json_reads_back_to_the_same_audit_and_to_html_writes_a_report(scanned, tmp_path):
    audit, _ = scanned
    back = ba.Audit.read(audit.to_json(tmp_path / "audit.json"))
    assert back.summary == audit.summary and back.conditions == audit.conditions and back.to_dict() == audit.to_dict()
    html = audit.to_html(tmp_path / "audit.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "missing:content" in html


def test_the_api_and_the_command_line_give_the_same_audit(scanned, shortcut_checkpoint, tmp_path):
    result = CliRunner().invoke(app, ["scan", str(shortcut_checkpoint), "--adapter", SHORTCUT, *FAST_FLAGS, "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    cli = ba.Audit.read(tmp_path / "cli" / "audit.json").to_dict()
    api = scanned[0].to_dict()
    # The manifest says where and when each ran (paths, times, run stamp, config-file sources); everything else is equal.
    for document in (cli, api):
        document.pop("manifest")
    assert api == cli


def test_a_scan_leaves_the_callers_random_generators_and_model_mode_alone(shortcut_checkpoint):
    module = _shortcut_module()
    adapter = module.ShortcutAdapter()
    model = adapter.build_model().train()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    ba.scan(model, adapter, **FAST)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert model.training


def test_scan_settings_pass_the_same_checks_as_the_command_line():
    module = _shortcut_module()
    adapter = module.ShortcutAdapter()
    with pytest.raises(InputError, match="'batch_size' parameter of ba.scan is int 0; expected a positive integer"):
        ba.scan(adapter.build_model(), adapter, batch_size=0)
    with pytest.raises(InputError, match="min_wrong is 0; expected a positive integer"):  # a setting by name: ScanConfig's own check
        ba.scan(adapter.build_model(), adapter, min_wrong=0)


def test_fix_through_the_api_gives_the_command_lines_audits_and_leaves_the_callers_model_alone(shortcut_checkpoint, tmp_path):
    module = _shortcut_module()
    adapter = module.TrainableShortcutAdapter()
    model = adapter.build_model()
    model.load_state_dict(torch.load(shortcut_checkpoint, weights_only=True))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = ba.fix(model, adapter, method="ce", epochs=1, projection="pca", bootstrap=50)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # inplace=False: a trained copy
    assert result.model is not model and isinstance(result.after, ba.Audit) and isinstance(result.comparison, ba.Comparison)
    assert result.comparison.paired and result.comparison.verdict == result.comparison.document["verdict"]

    spec = f"{FIXTURES / 'shortcut_adapter.py'}:TrainableShortcutAdapter"
    cli = CliRunner().invoke(app, ["fix", str(shortcut_checkpoint), "--adapter", spec, "--method", "ce", "--epochs", "1",
                                   "--scan-projection", "pca", "--bootstrap", "50", "--out", str(tmp_path / "fixed")])
    assert cli.exit_code == 0, cli.output
    for name, audit in (("before.json", result.before), ("after.json", result.after)):
        written = ba.Audit.read(tmp_path / "fixed" / name).to_dict()
        mine = audit.to_dict()
        written.pop("manifest"), mine.pop("manifest")
        assert mine == written, name
    on_disk = torch.load(tmp_path / "fixed" / "model.pt", weights_only=True)
    assert all(torch.equal(v, on_disk[k]) for k, v in result.model.state_dict().items())


def test_compare_and_gate_through_the_api_equal_the_documents_the_command_line_reads(scanned, tmp_path):
    audit, _ = scanned
    comparison = ba.compare(audit, audit)
    assert comparison.paired and comparison.accuracy.delta == 0 and comparison.accuracy.delta_ci == (0.0, 0.0)
    passing = ba.gate(audit, baseline=audit, rules=ba.GateRules(max_gap_increase=1.0, min_accuracy={"full": 0}))
    assert passing.passed and passing.status == "PASS" and {r.rule for r in passing.rules} >= {"min_accuracy[full]"}
    failing = ba.gate(audit, rules=ba.GateRules(min_accuracy={"full": 100}))
    assert failing.status == "FAIL" and failing.exit_code == 1 and not failing.passed
    with pytest.raises(InputError, match="The rules max_gap_increase compare against a baseline audit; pass baseline="):
        ba.gate(audit, rules=ba.GateRules(max_gap_increase=1.0))


def test_the_python_api_example_runs_scan_fix_compare_gate_on_the_demo(tmp_path):
    import subprocess
    import sys

    example = Path(__file__).parents[1] / "examples" / "python_api.py"
    result = subprocess.run([sys.executable, str(example), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "PASS  max_worst_group_drop[full]" in result.stdout and "less biased" in result.stdout
    assert ba.Audit.read(tmp_path / "after.json").summary.accuracy > 30


def test_the_api_functions_are_not_shadowed_by_submodules_once_everything_is_imported():
    """A submodule named like an API function (biasaudit/fix.py beside ba.fix) replaces the function on the package
    as soon as anything imports it: `ba.fix(...)` then fails with "'module' object is not callable"."""
    import importlib
    import inspect
    import pkgutil

    for module in pkgutil.walk_packages(ba.__path__, prefix="biasaudit."):
        if not module.name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(module.name)
    for name in ("scan", "fix", "compare", "gate"):
        assert inspect.isfunction(getattr(ba, name)), name


def test_fix_refuses_a_before_audit_of_other_settings_and_a_bad_method_option_before_any_work(scanned):
    """Found late, these cost a whole training and after-audit before the error (review of issue 12)."""
    audit, model = scanned
    module = _shortcut_module()
    adapter = module.TrainableShortcutAdapter()
    stages = []
    with pytest.raises(InputError, match=r"before does not match this run \(conditions, .*differ\)"):
        ba.fix(model, adapter, method="ce", conditions="full,missing", before=audit, progress=lambda *a: stages.append(a[0]))
    with pytest.raises(InputError, match="Method 'ce' does not take these options"):
        ba.fix(model, adapter, method="ce", options={"bogus": 1}, progress=lambda *a: stages.append(a[0]))
    assert stages == []


def test_an_unknown_scan_setting_is_an_input_error_naming_the_available_ones(scanned):
    module = _shortcut_module()
    adapter = module.ShortcutAdapter()
    with pytest.raises(TypeError, match=r"ba\.scan has no parameter 'nonsense'\. Available: .*bootstrap"):
        ba.scan(adapter.build_model(), adapter, nonsense=1)


def test_a_fix_reads_trains_labels_once_for_both_audits(monkeypatch):
    """Reading a split can be the slow part of a run (images decoded from disk): the before and after audits' JSD
    priors and probe samples all count train's labels, which one read gives them. MMDB's margins count the training
    view of train (without the rows held out for validation), which is other data and is read once more."""
    import biasaudit.data.batches as batches
    from biasaudit.datasets.demo_model import DemoModel, DigitsCaptionsAdapter

    adapter = DigitsCaptionsAdapter(seed=0)
    model = DemoModel()
    reads = []
    real = batches._read_split_labels
    monkeypatch.setattr(batches, "_read_split_labels", lambda adapter, split, **kw: reads.append(split) or real(adapter, split, **kw))
    ba.fix(model, adapter, method="mmdb", epochs=1, projection="pca", bootstrap=50, conditions="missing", options={"scale": 8.0})
    assert reads.count("train") == 2, reads  # the audits' one read, and the training view's
    reads.clear()
    ba.scan(model, adapter, **FAST, conditions="missing", mute=(("image", "mean"),))  # a copy with other mutes reads the same data
    ba.scan(model, adapter, **FAST, conditions="missing")
    assert reads.count("train") == 2, "each run reads once: nothing is kept between runs"


def test_the_library_logs_through_standard_logging_only_when_asked(scanned, caplog, capsys):
    """A training script that configures logging sees what a scan did; one that does not sees nothing (the library
    never prints, and logs below WARNING, which Python's fallback handler does not show)."""
    import logging

    _, model = scanned
    adapter = _shortcut_module().ShortcutAdapter()
    ba.scan(model, adapter, **FAST)
    assert capsys.readouterr() == ("", "")
    with caplog.at_level(logging.INFO, logger="biasaudit"):
        audit = ba.scan(model, adapter, **FAST)
    records = [r for r in caplog.records if r.name.startswith("biasaudit")]
    assert records and all(r.levelno < logging.WARNING for r in records)
    assert f"audit of split 'test': {audit.document['dataset']['n']} samples" in caplog.text


def test_the_bias_measures_are_typed_and_carry_the_answers_known_by_hand(scanned):
    """The figures users are told to read first (carrier, bias-follow rate, worst-group) were nested dicts; now typed,
    and equal to the hand-computed answers of tests/fixtures/shortcut_adapter.py and to the document."""
    audit, _ = scanned
    bias, document = audit.bias, audit.document
    assert bias.carrier == "bias_cue" and bias.dominant == "content"
    # Label-2 samples follow the donor's bias cue: the excess is 1 - accuracy under the swap; the swap flips a third.
    cue = bias.swaps["bias_cue"]
    assert bias.follow_rate["bias_cue"].value == pytest.approx(1 - cue.accuracy.value / 100) and cue.flip_rate == pytest.approx(1 / 3)
    assert bias.follow_rate["bias_cue"].excludes_zero and bias.follow_rate["content"].value == 0.0
    swap = document["carrier"]["modalities"]["bias_cue"]["bias_swap"]
    assert bias.follow_rate["bias_cue"].interval == tuple(swap["excess_follow_rate_ci"]) and bias.swaps["bias_cue"].n == swap["n"]
    # test: every (label, bias) pair equally often; label 2 follows the bias cue, so its conflicting groups score 0.
    assert bias.worst_group["full"].value == 0.0 and bias.bias_balanced["full"].value == pytest.approx(700 / 9)
    assert bias.groups["full"].worst_group_label == document["groups"]["conditions"]["full"]["worst_group_label"]
    # test holds every (label, bias) pair equally often, train 90% aligned: out of distribution for the bias.
    assert bias.ood is True and bias.ood_accuracy == ba.Estimate(audit.summary.accuracy, *audit.summary.accuracy_ci)
    assert audit.calibration["full"].ece == document["calibration"]["conditions"]["full"]["ece"]
    if document["ceilings"]["available"]:
        assert audit.ceilings.modalities["content"].ceiling.value == document["ceilings"]["modalities"]["content"]["ceiling"]
    else:
        assert audit.ceilings is None
    assert ba.Audit.from_dict(audit.to_dict()).bias == bias  # the typed view is the document's, both ways
    assert "carrier='bias_cue'" in repr(audit) and "dominant='content'" in repr(audit)
    page = audit._repr_html_()
    assert "<table>" in page and "missing:content" in page and "bias_cue" in page


def test_a_comparisons_bias_changes_are_typed_estimates(scanned):
    audit, _ = scanned
    comparison = ba.compare(audit, audit)
    worst = comparison.bias.worst_group["full"]
    assert (worst.before, worst.after) == (0.0, 0.0) and worst.change.value == 0.0 and worst.change.interval == (0.0, 0.0)
    assert not worst.change.excludes_zero
    assert set(comparison.bias.follow_rate) == {"bias_cue", "content"}
    assert comparison.bias.carrier_before == comparison.bias.carrier_after == "bias_cue"
    assert comparison.bias.ood.change.value == 0.0  # an OOD split: its Full accuracy is the OOD accuracy
    from html import escape

    assert escape(comparison.verdict.split(":")[0]) in comparison._repr_html_()


def test_fix_has_the_command_lines_defaults_and_takes_every_scan_setting(tmp_path):
    """`ba.fix` ran BalGrad and MMDB at scale 4 by default while `biasaudit fix` ran MMDB with --scale auto, and an audit
    taken with any non-default scan setting could not be its `before`."""
    import json

    from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
    from biasaudit.training.methods import DEFAULT_METHOD

    adapter = DigitsCaptionsAdapter()  # MMDB, the default, needs the classifier hook the shortcut fixture lacks
    model = train_baseline(adapter, seed=0, epochs=1)
    checkpoint = tmp_path / "baseline.pt"
    torch.save(model.state_dict(), checkpoint)
    quick = dict(projection="pca", bootstrap=50, conditions="missing")
    before = ba.scan(model, adapter, min_wrong=1, **quick)
    result = ba.fix(model, adapter, epochs=1, min_wrong=1, before=before, **quick)
    spec = "biasaudit.datasets.demo_model:DigitsCaptionsAdapter"
    cli = CliRunner().invoke(app, ["fix", str(checkpoint), "--adapter", spec, "--epochs", "1", "--scan-projection", "pca",
                                   "--bootstrap", "50", "--min-wrong", "1", "--conditions", "missing", "--out", str(tmp_path / "fixed")])
    assert cli.exit_code == 0, cli.output
    log = json.loads((tmp_path / "fixed" / "train_log.json").read_text())["training"]
    mine = result.train_log["training"]
    assert mine["method"] == log["method"] == DEFAULT_METHOD
    assert mine["option_selection"]["option"] == "scale" and json.loads(json.dumps(mine["option_selection"])) == log["option_selection"]
    assert json.loads(json.dumps(mine["settings"])) == log["settings"]
    written = ba.Audit.read(tmp_path / "fixed" / "after.json").to_dict()
    ours = result.after.to_dict()
    written.pop("manifest"), ours.pop("manifest")
    assert ours == written
    with pytest.raises(ba.BiasAuditError, match="min_wrong differ"):
        ba.fix(model, adapter, epochs=1, before=before, **quick)
    with pytest.raises(ba.BiasAuditError, match="has no parameter 'min_wrongs'"):
        ba.fix(model, adapter, epochs=1, min_wrongs=1)


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline

    adapter = DigitsCaptionsAdapter()
    model = train_baseline(adapter, seed=0, epochs=1)
    path = tmp_path_factory.mktemp("demo") / "baseline.pt"
    torch.save(model.state_dict(), path)
    return path, adapter, model


METHOD_FLAGS = {"mmdb": ["--scale", "4"], "jtt": ["--epochs", "2"], "dandr": ["--epochs", "2", "--dandr-every", "1"]}
METHOD_OPTIONS = {"mmdb": {"scale": 4.0}, "jtt": {}, "dandr": {"every": 1}}


@pytest.mark.parametrize("method", ["ce", "mmdb", "balgrad", "ogm_ge", "mmpareto", "groupdro", "jtt", "dandr", "dfr"])
def test_every_fix_method_gives_the_same_outputs_from_python_and_from_the_command_line(demo_checkpoint, tmp_path, method):
    """The CLI is a shell over ba.fix: the same audits, settings and steps either way, field by field (run ids,
    timings, paths and hashes aside), for every method."""
    import json

    checkpoint, adapter, model = demo_checkpoint
    epochs = 2 if method in ("jtt", "dandr") else 1
    quick = dict(projection="pca", bootstrap=20, conditions="missing")
    result = ba.fix(model, adapter, method=method, epochs=epochs, options=METHOD_OPTIONS.get(method, {}), **quick)
    flags = ["--epochs", str(epochs)] + [f for f in METHOD_FLAGS.get(method, []) if f not in ("--epochs", "2")]
    cli = CliRunner().invoke(app, ["fix", str(checkpoint), "--adapter", "biasaudit.datasets.demo_model:DigitsCaptionsAdapter", "--method",
                                   method, *flags, "--scan-projection", "pca", "--bootstrap", "20", "--conditions", "missing",
                                   "--out", str(tmp_path / "fixed")])
    assert cli.exit_code == 0, cli.output

    def plain(value):
        return json.loads(json.dumps(value))

    def without_run(document):
        return {k: v for k, v in plain(document).items() if k not in ("manifest", "run")}

    log = json.loads((tmp_path / "fixed" / "train_log.json").read_text())
    mine = plain(result.train_log)
    for key in ("method", "settings", "option_selection", "after_audit_scores", "start"):
        assert mine["training"][key] == log["training"][key], key
    assert [{k: v for k, v in s.items() if k != "seconds"} for s in mine["steps"]] == \
        [{k: v for k, v in s.items() if k != "seconds"} for s in log["steps"]]
    for name, audit in (("before.json", result.before), ("after.json", result.after)):
        assert without_run(audit.to_dict()) == without_run(json.loads((tmp_path / "fixed" / name).read_text())), name
    compare = json.loads((tmp_path / "fixed" / "compare.json").read_text())
    assert without_run(result.comparison.to_dict()) == without_run(compare)
