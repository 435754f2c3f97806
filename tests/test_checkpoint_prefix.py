"""Checkpoints whose keys carry a wrapper's prefix: DataParallel/DDP ("module."), torch.compile ("_orig_mod."),
both stacked, and a Lightning checkpoint ({"state_dict": {"model.…": …}, "epoch": …, …}).

Known fact: each gives exactly the audit of the plain state dict, and the manifest names the prefix removed.
Bad input: a state_dict_prefix that matches no key is one sentence naming the prefix and the keys seen."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from biasaudit.scanning.audit import audit_checkpoint, load_model_noting_prefix, write_audit
from biasaudit.data.checkpoint import find_wrapper_prefix, read_checkpoint
from biasaudit.comparing import compare_audits
from biasaudit.errors import CheckpointError
from biasaudit.training.fix_checks import reusable_before
from biasaudit.results import to_json_text
from biasaudit.scanning.config import ScanConfig

FIXTURE = Path(__file__).parent / "fixtures" / "loader_adapters.py"
SCRIPT = Path(sys.executable).parent / "biasaudit"
CONFIG = ScanConfig(split="test", conditions="missing", batch_size=16, bootstrap_replicates=50, projection="pca", gradient_batches=1)


def load_fixture():
    spec = importlib.util.spec_from_file_location("loader_adapters_prefix_fixture", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fx = load_fixture()


def prefixed(state, prefix):
    return {prefix + key: value for key, value in state.items()}


def lightning(state):
    """What Lightning's trainer.save_checkpoint writes for a LightningModule holding the network as self.model and
    a weighted loss as self.criterion: plain Python types, lists, nested dicts of tensors."""
    return {
        "epoch": 4, "global_step": 120, "pytorch-lightning_version": "2.4.0",
        "state_dict": prefixed(state, "model.") | {"criterion.weight": torch.ones(3)},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 5, "completed": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25), "dirpath": "/runs/x"}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(120.0), "exp_avg": torch.zeros(3)}},
                              "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "weight_decay": 0.0, "params": [0, 1]}]}],
        "lr_schedulers": [], "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.01, "widths": [16, 8], "name": "net"},
    }


CASES = {
    "plain": (lambda s: s, None),
    "DataParallel / DDP": (lambda s: prefixed(s, "module."), "module."),
    "torch.compile": (lambda s: prefixed(s, "_orig_mod."), "_orig_mod."),
    "compiled, then DDP": (lambda s: prefixed(s, "module._orig_mod."), "module._orig_mod."),
    "Lightning": (lightning, "model."),
}


@pytest.fixture(scope="module")
def state():
    return fx.trained_net().state_dict()


@pytest.fixture(scope="module")
def checkpoints(state, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefixes")
    paths = {}
    for case, (wrap, _) in CASES.items():
        paths[case] = folder / f"{case.replace(' ', '_').replace('/', '')}.pt"
        torch.save(wrap(state), paths[case])
    return paths


@pytest.fixture(scope="module")
def audits(checkpoints):
    return {case: audit_checkpoint(path, fx.loader_adapter(), config=CONFIG) for case, path in checkpoints.items()}


def without_manifest(audit):
    return to_json_text({k: v for k, v in audit.items() if k != "manifest"})


@pytest.mark.parametrize("case", [c for c in CASES if c != "plain"])
def test_a_prefixed_checkpoint_gives_the_plain_audit_and_the_manifest_names_the_prefix(case, audits):
    assert without_manifest(audits[case]) == without_manifest(audits["plain"])
    assert audits[case]["manifest"]["checkpoint"]["prefix_removed"] == CASES[case][1]
    assert audits["plain"]["manifest"]["checkpoint"]["prefix_removed"] is None


def test_the_plain_audit_is_of_the_trained_model_not_a_fresh_one(audits):
    assert audits["plain"]["summary"]["full"]["accuracy"] > 60  # a fresh Net is near chance (33%)


def test_a_lightning_checkpoint_loads_with_weights_only(checkpoints, state):
    loaded = read_checkpoint(checkpoints["Lightning"])  # weights_only=True: plain types, lists and nested dicts pass
    assert set(loaded) == {f"model.{k}" for k in state} | {"criterion.weight"}


def test_an_explicit_state_dict_prefix_is_removed_and_other_keys_ignored(checkpoints, state):
    model, removed = load_model_noting_prefix(checkpoints["Lightning"], fx.loader_adapter(state_dict_prefix="model."))
    assert removed == "model."
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_an_explicit_prefix_still_loads_a_plain_state_dict(checkpoints, state):
    """What `biasaudit fix` writes is the plain state dict of the adapter's model: the same adapter must read it."""
    model, removed = load_model_noting_prefix(checkpoints["plain"], fx.loader_adapter(state_dict_prefix="model."))
    assert removed is None and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_an_explicit_prefix_that_matches_no_key_names_the_prefix_and_the_keys(checkpoints):
    with pytest.raises(CheckpointError, match=r"state_dict_prefix 'net\.' matches no key of checkpoint .*Lightning\.pt; its keys are "
                                              r"model\.image_branch\.1\.weight, .* and \d+ more\."):
        load_model_noting_prefix(checkpoints["Lightning"], fx.loader_adapter(state_dict_prefix="net."))


def test_keys_that_match_as_they_are_are_never_stripped():
    class Holder(nn.Module):  # its own keys start with "model."
        def __init__(self):
            super().__init__()
            self.model = nn.Linear(2, 2)

    state = Holder().state_dict()
    assert find_wrapper_prefix(set(state), state) is None
    assert find_wrapper_prefix({"weight", "bias"}, state) == "model."
    assert find_wrapper_prefix(set(state), prefixed(state, "module._orig_mod.")) == "module._orig_mod."
    assert find_wrapper_prefix({"weight"}, {"net.weight": 1}) is None  # not a wrapper's prefix


def test_a_real_mismatch_is_reported_with_the_keys_as_the_file_has_them(tmp_path, state):
    path = tmp_path / "other.pt"
    torch.save(prefixed({"encoder.weight": torch.zeros(2)}, "module."), path)
    with pytest.raises(CheckpointError, match=r"missing keys: image_branch\.1\.weight.*unexpected keys: module\.encoder\.weight"):
        load_model_noting_prefix(path, fx.loader_adapter())


def test_an_adapter_with_its_own_load_state_gets_the_keys_as_they_are(checkpoints):
    seen = []

    class OwnLoad(fx.HandWritten):
        def load_state(self, model, state):
            seen.append(sorted(state)[0])
            model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})

    _, removed = load_model_noting_prefix(checkpoints["DataParallel / DDP"], OwnLoad())
    assert removed is None and seen == ["module.head.bias"]


def test_compare_and_fix_before_accept_an_audit_of_a_prefixed_checkpoint(audits, checkpoints, tmp_path):
    comparison = compare_audits(audits["plain"], audits["compiled, then DDP"])
    assert all(row["delta"] == 0 for row in comparison["conditions"] if row.get("delta") is not None)
    json_path, _ = write_audit(audits["Lightning"], tmp_path / "before")
    from biasaudit._core.files import file_sha256

    assert reusable_before(json_path, config=CONFIG, checkpoint_sha=file_sha256(checkpoints["Lightning"]))["manifest"]["checkpoint"]["prefix_removed"] == "model."


# ---- through the console script ---------------------------------------------------------------------------------
def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


FAST = ["--conditions", "missing", "--bootstrap", "50", "--projection", "pca", "--gradient-batches", "1"]


def test_scan_names_the_removed_prefix_in_audit_json_and_html(checkpoints, tmp_path):
    result = run("scan", str(checkpoints["compiled, then DDP"]), "--adapter", f"{FIXTURE}:adapter", "--out", str(tmp_path / "a"), *FAST)
    assert result.returncode == 0, result.stderr
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert audit["manifest"]["checkpoint"]["prefix_removed"] == "module._orig_mod."
    assert "key prefix removed to load it: module._orig_mod." in (tmp_path / "a" / "audit.html").read_text()


def test_a_state_dict_prefix_that_matches_no_key_exits_2_in_one_sentence_and_writes_nothing(checkpoints, tmp_path):
    out = tmp_path / "out"
    result = run("scan", str(checkpoints["Lightning"]), "--adapter", f"{FIXTURE}:PrefixNet", "--out", str(out), *FAST)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(r"state_dict_prefix 'net\.' matches no key of checkpoint .*; its keys are model\.", " ".join(result.stderr.split())), result.stderr
    assert not out.exists()


def test_an_explicit_prefix_loads_the_plain_state_of_a_model_whose_own_child_is_called_model():
    """A network holding `self.model` (Hugging Face's *For... classes): its plain keys start with the prefix too, and
    stripping them would fail to load the very model.pt that `fix` wrote."""
    from biasaudit.data.checkpoint import resolve_prefix

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Linear(2, 2)

    class PrefixAdapter:
        state_dict_prefix = "model."

    holder = Holder()
    state = holder.state_dict()
    resolved, removed = resolve_prefix(PrefixAdapter(), holder, state, path="model.pt")
    assert removed is None and set(resolved) == set(state)
    lightning = prefixed(state, "model.")
    resolved, removed = resolve_prefix(PrefixAdapter(), holder, lightning, path="last.ckpt")
    assert removed == "model." and set(resolved) == set(state)
