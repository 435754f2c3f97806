"""The command line through the real console script: what a user types, what they see, the exit code,
and that nothing is written when the input is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
TINY = f"{FIXTURES / 'tiny_adapter.py'}:adapter"
BROKEN = FIXTURES / "broken_adapters.py"
SCRIPT = Path(sys.executable).parent / "biasaudit"
FAST = ["--bootstrap", "50", "--projection", "pca", "--gradient-batches", "1", "--batch-size", "32"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def one_sentence(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    return " ".join(stderr.replace("│", " ").split())  # click's usage box wraps its sentence


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    sys.path.insert(0, str(FIXTURES))
    try:
        import tiny_adapter
    finally:
        sys.path.pop(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(tiny_adapter.ReadsOnlyA().state_dict(), path)
    return path


def test_scan_writes_both_files_and_prints_their_paths(checkpoint, tmp_path):
    out = tmp_path / "audit"
    result = run("scan", str(checkpoint), "--adapter", TINY, "--out", str(out), *FAST)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out / "audit.json"), str(out / "audit.html")]
    audit = json.loads((out / "audit.json").read_text())
    assert audit["summary"]["missing"]["dominant"] == "a"
    assert audit["manifest"]["checkpoint"]["sha256"] and audit["manifest"]["adapter"]["sha256"]
    assert (out / "audit.html").read_text().lstrip().lower().startswith("<!doctype html")


def test_python_dash_m_works_too():
    result = subprocess.run([sys.executable, "-m", "biasaudit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "scan" in result.stdout


def test_missing_bias_value_skips_only_jsd_with_a_note(checkpoint, tmp_path):
    out = tmp_path / "nobias"
    result = run("scan", str(checkpoint), "--adapter", f"{BROKEN}:no_bias", "--out", str(out), *FAST)
    assert result.returncode == 0, result.stderr
    audit = json.loads((out / "audit.json").read_text())
    assert audit["jsd"]["available"] is False and "bias" in audit["jsd"]["note"]
    assert audit["summary"]["full"]["accuracy"] == 100.0


def garbage_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint")
    return path


def pickled_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "pickled.pt"
    torch.save({"classifier.weight": torch.eye(4), "note": Path("x")}, path)
    return path


def mismatched_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "mismatch.pt"
    torch.save({"head.weight": torch.eye(4)}, path)
    return path


CASES = {
    "missing checkpoint": (lambda t, c: [str(t / "nope.pt"), "--adapter", TINY], r"Checkpoint .*nope\.pt does not exist"),
    "unreadable checkpoint": (lambda t, c: [str(garbage_checkpoint(t)), "--adapter", TINY], r"garbage\.pt is not a PyTorch checkpoint"),
    "unsafe checkpoint": (lambda t, c: [str(pickled_checkpoint(t)), "--adapter", TINY], r"weights_only=True .* --trust-checkpoint"),
    "state dict mismatch": (lambda t, c: [str(mismatched_checkpoint(t)), "--adapter", TINY],
                            r"does not match .*missing keys: classifier\.weight; unexpected keys: head\.weight"),
    "adapter file not found": (lambda t, c: [str(c), "--adapter", "no/such/adapter.py:adapter"], r"Adapter file no/such/adapter\.py does not exist"),
    "adapter name not found": (lambda t, c: [str(c), "--adapter", f"{FIXTURES / 'tiny_adapter.py'}:nothing"], r"has no attribute 'nothing'\. Available: TinyAdapter"),
    "adapter missing a part": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:no_prepare"], r"no prepare\(\) method"),
    "unknown condition": (lambda t, c: [str(c), "--adapter", TINY, "--conditions", "missing,blurry"], r"Unknown condition 'blurry'\. Available:"),
    "unknown impairment": (lambda t, c: [str(c), "--adapter", TINY, "--conditions", "a=blur:0.1"], r"Unknown impairment 'blur' .* Available: .*gaussian"),
    "severity outside [0,1]": (lambda t, c: [str(c), "--adapter", TINY, "--conditions", "a=gaussian:2"], r"Severity 2\.0 .* outside \[0, 1\]"),
    "empty split": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:empty_split"], r"Split 'test' is empty"),
    "labels out of range": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:labels_out_of_range"], r"label [45], outside \[0, 4\)"),
    "unknown split": (lambda t, c: [str(c), "--adapter", TINY, "--split", "ood"], r"Split 'ood' is not offered .* Available: train, test"),
    "NaN logits": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:returns_nan"], r"NaN or infinite logits under condition 'full'"),
    "data() returns None": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:data_returns_none"],
                            r"data\('\w+', batch_size=\d+\) returned NoneType; expected an iterable of dict batches"),
    "data() yields ints": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:yields_ints"], r"data\('\w+', \.\.\.\) yielded a int; expected a dict batch"),
    "text modality given a tensor": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:text_as_tensor"],
                                     r"Text modality 'b' of split '\w+' is a Tensor under key 'b'; expected a list of strings"),
    "classifier() returns a string": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:classifier_is_string"],
                                      r"classifier\(model\) hook returned a str; expected the final nn\.Linear or None"),
    "bool logits": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:bool_logits"], r"forward\(\) returned logits of dtype torch\.bool; expected floating-point logits"),
    "class_names too short": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:short_class_names"], r"class_names has 2 names; expected 4, one per class"),
    "branches() of an unknown modality": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:branches_of_an_unknown_modality"],
                                          r"branches\(model\) hook names 'image', which is not a modality\. Available: a, b"),
    "adapter file exits at import": (lambda t, c: [str(c), "--adapter", f"{FIXTURES / 'exits_at_import.py'}:adapter"],
                                     r"exits_at_import\.py called sys\.exit\(4\) while being imported"),
    "modality key absent from batches": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:wrong_modality_key"],
                                         r"no key 'features', which modality 'a' declares; keys present: a, b, y, k"),
    "pixels outside value_range": (lambda t, c: [str(c), "--adapter", f"{BROKEN}:pixels_out_of_range"],
                                   r"raw pixels from 200 to 200, outside its value_range \(0\.0, 1\.0\)"),
    "bad --mute": (lambda t, c: [str(c), "--adapter", TINY, "--mute", "a"], r"--mute 'a' is not of the form MODALITY=IMPAIRMENT"),
    "--mute with a noise": (lambda t, c: [str(c), "--adapter", TINY, "--mute", "a=gaussian"], r"--mute gives a=gaussian, but 'gaussian' is not a muting impairment of tensor modality 'a'. Available: zero"),
    "unknown projection": (lambda t, c: [str(c), "--adapter", TINY, "--projection", "tsne"], r"'tsne' is not one of 'umap', 'pca'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistakes_exit_2_with_one_sentence_and_write_nothing(case, checkpoint, tmp_path):
    make_args, pattern = CASES[case]
    out = tmp_path / "out"
    result = run("scan", *FAST, "--out", str(out), *make_args(tmp_path, checkpoint))
    assert result.returncode == 2, (result.returncode, result.stderr)
    import re

    assert re.search(pattern, one_sentence(result.stderr)), result.stderr
    assert not out.exists(), "a failed scan must not write anything"


def test_trust_checkpoint_opt_in_loads_a_pickle(tmp_path):
    path = tmp_path / "pickled_ok.pt"
    sys.path.insert(0, str(FIXTURES))
    try:
        import tiny_adapter
    finally:
        sys.path.pop(0)
    torch.save({"state_dict": tiny_adapter.ReadsOnlyA().state_dict(), "epoch": 3, "path": Path("x")}, path)
    refused = run("scan", str(path), "--adapter", TINY, "--out", str(tmp_path / "a"), *FAST)
    assert refused.returncode == 2
    accepted = run("scan", str(path), "--adapter", TINY, "--out", str(tmp_path / "b"), "--trust-checkpoint", *FAST)
    assert accepted.returncode == 0, accepted.stderr


def test_out_path_that_is_a_file_is_refused_and_kept(checkpoint, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    result = run("scan", str(checkpoint), "--adapter", TINY, "--out", str(target), *FAST)
    assert result.returncode == 2 and "not a directory" in one_sentence(result.stderr)
    assert target.read_text() == "keep me"


def test_input_checkpoint_is_never_modified(checkpoint, tmp_path):
    before = checkpoint.read_bytes()
    run("scan", str(checkpoint), "--adapter", TINY, "--out", str(tmp_path / "x"), *FAST)
    assert checkpoint.read_bytes() == before
