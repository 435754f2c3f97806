"""The bias diagnostics through the real console script: the carrier and its verdict printed, a unimodal
checkpoint as a ceiling, and mistakes in the new options refused before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SHORTCUT = f"{FIXTURES / 'shortcut_adapter.py'}:ShortcutAdapter"
SCRIPT = Path(sys.executable).parent / "biasaudit"
FAST = ["--bootstrap", "50", "--projection", "pca", "--gradient-batches", "1", "--batch-size", "32", "--min-wrong", "1"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(shortcut_checkpoint) -> Path:
    return shortcut_checkpoint


def test_scan_prints_the_carrier_and_a_verdict_that_names_both_modalities(checkpoint, tmp_path):
    out = tmp_path / "audit"
    result = run("scan", str(checkpoint), "--adapter", SHORTCUT, "--out", str(out), *FAST, "--unimodal", f"content={checkpoint}")
    assert result.returncode == 0, result.stderr
    stderr = " ".join(result.stderr.split())
    assert "carrier" in stderr and "verdict:" in stderr
    audit = json.loads((out / "audit.json").read_text())
    assert audit["summary"]["carrier"] == "bias_cue" and audit["summary"]["missing"]["dominant"] == "content"
    content = audit["ceilings"]["modalities"]["content"]
    # The unimodal checkpoint is scored with the bias cue muted: it predicts the label from the content, always right.
    assert content["source"] == f"checkpoint {checkpoint}" and content["ceiling"] == 100.0
    assert audit["ceilings"]["modalities"]["bias_cue"]["source"].startswith("linear probe")


@pytest.mark.parametrize("args, expected", [
    (["--unimodal", "content"], "--unimodal 'content' is not of the form MODALITY=CHECKPOINT"),
    (["--unimodal", "sound=x.pt"], "names modality 'sound'. Available: bias_cue, content"),
    (["--unimodal", "content=/nonexistent.pt"], "--unimodal: content's checkpoint /nonexistent.pt does not exist"),
    (["--group-by", "colour"], "'--group-by': Value error, 'colour' is not one of 'auto', 'bias', 'alignment'"),
    (["--conditions", "missing,carriers"], "Unknown condition 'carriers'"),
])
def test_bad_diagnostic_options_exit_2_with_one_sentence_and_write_nothing(checkpoint, tmp_path, args, expected):
    out = tmp_path / "audit"
    result = run("scan", str(checkpoint), "--adapter", SHORTCUT, "--out", str(out), *FAST, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and expected in " ".join(result.stderr.replace("│", " ").split())
    assert not out.exists()


def test_a_bad_new_setting_in_the_config_file_names_the_file_and_key(checkpoint, tmp_path):
    config = tmp_path / "biasaudit.toml"
    config.write_text('[scan]\ngroup_by = "labels"\n')
    out = tmp_path / "audit"
    result = run("scan", str(checkpoint), "--adapter", SHORTCUT, "--out", str(out), *FAST, "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{config} [scan] group_by is 'labels', which is unknown" in " ".join(result.stderr.split())
    assert not out.exists()


def test_fix_reuses_a_scan_taken_with_any_scan_setting_and_names_the_one_that_differs(checkpoint, tmp_path):
    """`fix --before` takes every scan option that shapes the audits: a scan made with --mute and --min-group is
    reusable when fix is given the same, and refused, naming the setting, when not."""
    from biasaudit._core.files import file_sha256
    from biasaudit.errors import InputError
    from biasaudit.training.fix_checks import reusable_before
    from biasaudit.scanning.config import ScanConfig

    out = tmp_path / "audit"
    result = run("scan", str(checkpoint), "--adapter", SHORTCUT, "--out", str(out), *FAST, "--conditions", "missing,carrier",
                 "--mute", "content=mean", "--min-group", "5")
    assert result.returncode == 0, result.stderr
    same = ScanConfig(split="test", conditions="missing,carrier", seed=0, bootstrap_replicates=50, projection="pca", gradient_batches=1,
                      min_wrong=1, mute=(("content", "mean"),), min_group=5)
    assert reusable_before(out / "audit.json", config=same, checkpoint_sha=file_sha256(checkpoint))["manifest"]["config"]["min_group"] == 5
    other = ScanConfig(**{**same.to_dict(), "min_group": 10, "batch_size": 7})
    with pytest.raises(InputError, match=r"\(min_group differ\)"):
        reusable_before(out / "audit.json", config=other, checkpoint_sha=file_sha256(checkpoint))


@pytest.mark.parametrize("args, expected", [
    (["--scan-projection", "tsne"], "'--scan-projection': Value error, 'tsne' is not one of 'umap', 'pca'"),
    (["--group-by", "colour"], "'--group-by': Value error, 'colour' is not one of 'auto', 'bias', 'alignment'"),
    (["--mute", "content=salt"], "--mute gives content=salt, but 'salt' is not a muting impairment of image modality 'content'"),
])
def test_fix_refuses_bad_audit_settings_before_any_work_and_leaves_the_output_as_it_was(checkpoint, tmp_path, args, expected):
    out = tmp_path / "fixed"
    out.mkdir()
    (out / "after.json").write_text("an earlier run's result")
    result = run("fix", str(checkpoint), "--adapter", SHORTCUT, "--out", str(out), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in " ".join(result.stderr.replace("│", " ").split())
    assert sorted(p.name for p in out.iterdir()) == ["after.json"] and (out / "after.json").read_text() == "an earlier run's result"


@pytest.mark.parametrize("setting, expected", [
    ("batch_size = 0", "[scan] batch_size is 0; expected a positive integer."),
    ("kmeans_k = 0", "[scan] kmeans_k is 0; expected an integer of at least 2."),
    # Once this switched gradient conflict off silently.
    ("gradient_batches = 0", "[scan] gradient_batches is 0; expected a positive integer."),
    ("bootstrap = 3", "[scan] bootstrap is 3; expected an integer of at least 10."),
    ("mute = [1, 2]", "[scan] mute: --mute 1 is not of the form MODALITY=IMPAIRMENT"),
])
def test_config_file_settings_pass_the_command_lines_checks_and_name_the_file_and_key(setting, expected, checkpoint, tmp_path):
    config = tmp_path / "biasaudit.toml"
    config.write_text(f"[scan]\n{setting}\n")
    out = tmp_path / "audit"
    result = run("scan", str(checkpoint), "--adapter", SHORTCUT, "--out", str(out), "--projection", "pca", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{config} {expected}" in " ".join(result.stderr.split())
    assert not out.exists()
