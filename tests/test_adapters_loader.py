"""LoaderAdapter (an adapter from an nn.Module factory and DataLoaders) and the default logits extraction.

Known facts: a LoaderAdapter audit equals, number for number, the audit of a hand-written Adapter subclass over
the same model and data; batches are re-cut at the requested size in the loader's order with every sample kept.
Bad input through the real console script: exit 2, one sentence naming the problem, nothing written."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import (BatchSampler, DataLoader, RandomSampler, SequentialSampler, Subset, SubsetRandomSampler,
                              WeightedRandomSampler)
from torch.utils.data.distributed import DistributedSampler

from biasaudit.data.adapter import Adapter, load_adapter, logits_of
from biasaudit.adapters import LoaderAdapter, model_inputs
from biasaudit.scanning.audit import audit_model
from biasaudit.errors import AdapterError, DataError
from biasaudit.results import to_json_text
from biasaudit.scanning.config import ScanConfig

FIXTURE = Path(__file__).parent / "fixtures" / "loader_adapters.py"
SCRIPT = Path(sys.executable).parent / "biasaudit"
FAST = ["--conditions", "missing", "--bootstrap", "50", "--projection", "pca", "--gradient-batches", "1"]
CPU = torch.device("cpu")


def load_fixture():
    spec = importlib.util.spec_from_file_location("loader_adapters_fixture", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fx = load_fixture()


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def one_sentence(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    return " ".join(stderr.split())


# ---- known facts ------------------------------------------------------------------------------------------------
def test_loader_adapter_audit_equals_the_hand_written_subclass_audit():
    model = fx.trained_net()
    config = ScanConfig(split="test", batch_size=16, bootstrap_replicates=50, projection="pca", gradient_batches=2)
    by_loader = audit_model(model, fx.loader_adapter(), config=config, checkpoint=None)
    by_hand = audit_model(model, fx.HandWritten(), config=config, checkpoint=None)
    by_loader.pop("manifest"), by_hand.pop("manifest")
    assert to_json_text(by_loader) == to_json_text(by_hand)
    # ... and the audit has something in it to agree on: mistakes, flips, embeddings, ceilings.
    rows = {row["name"]: row for row in by_loader["conditions"]}
    assert 0 < rows["full"]["accuracy"] < 100 and rows["missing:image"]["accuracy"] != rows["full"]["accuracy"]
    assert by_loader["embeddings"]["available"] is True


def test_data_is_recut_at_the_requested_size_in_the_loaders_order_keeping_every_sample():
    adapter = fx.loader_adapter(loaders={"test": DataLoader(fx.DictData("test"), batch_size=8, drop_last=True)})
    batches = adapter.data("test", batch_size=7)
    assert len(batches) == 7
    seen = list(batches)
    assert [len(b["label"]) for b in seen] == [7] * 6 + [3]  # drop_last would have lost 5 of the 45
    assert [i for b in seen for i in b["id"]] == [f"sample-{i}" for i in range(45)]
    assert torch.equal(torch.cat([b["label"] for b in seen]), fx.split_tensors("test")["label"])


def test_a_loaders_own_sampler_order_and_subset_are_kept():
    data = fx.DictData("test")
    order = list(range(44, -1, -3))  # a fixed, non-trivial order over a subset
    adapter = fx.loader_adapter(loaders={"test": DataLoader(data, batch_size=4, sampler=order)})
    ids = [i for batch in adapter.data("test", batch_size=5) for i in batch["id"]]
    assert ids == [f"sample-{i}" for i in order]


def test_a_custom_batch_sampler_is_read_as_it_is():
    groups = [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    adapter = fx.loader_adapter(loaders={"test": DataLoader(fx.DictData("test"), batch_sampler=groups)})
    assert [b["id"] for b in adapter.data("test", batch_size=100)] == [[f"sample-{i}" for i in g] for g in groups]


def _shuffling_loaders():
    data = fx.DictData("test")
    return {
        "shuffle=True": DataLoader(data, batch_size=8, shuffle=True),
        "RandomSampler": DataLoader(data, batch_size=8, sampler=RandomSampler(data)),
        "batch_sampler over RandomSampler": DataLoader(data, batch_sampler=BatchSampler(RandomSampler(data), 8, False)),
        "SubsetRandomSampler": DataLoader(data, batch_size=8, sampler=SubsetRandomSampler(range(10))),
        "WeightedRandomSampler": DataLoader(data, batch_size=8, sampler=WeightedRandomSampler([1.0] * 45, 45)),
        "DistributedSampler(shuffle=True)": DataLoader(data, batch_size=8, sampler=DistributedSampler(data, num_replicas=1, rank=0)),
    }


@pytest.mark.parametrize("case", list(_shuffling_loaders()))
def test_a_shuffling_loader_is_refused_naming_the_split(case):
    with pytest.raises(AdapterError, match=r"The DataLoader of split 'test' shuffles .*; pass shuffle=False"):
        fx.loader_adapter(loaders={"train": fx.loaders()["train"], "test": _shuffling_loaders()[case]})


def test_fixed_order_samplers_are_accepted():
    data = fx.DictData("test")
    for loader in (DataLoader(data, sampler=SequentialSampler(data)), DataLoader(Subset(data, [3, 1]), batch_size=2),
                   DataLoader(data, sampler=DistributedSampler(data, num_replicas=1, rank=0, shuffle=False))):
        assert fx.loader_adapter(loaders={"test": loader}).splits == ("test",)


def test_loaders_keys_are_the_splits_and_an_unknown_split_names_them():
    adapter = fx.loader_adapter()
    assert adapter.splits == ("train", "test")
    with pytest.raises(DataError, match=r"Split 'ood' has no DataLoader\. Available: train, test\."):
        adapter.data("ood", batch_size=4)


def test_batches_that_are_not_dicts_are_refused_in_one_sentence():
    pairs = [(torch.zeros(2), 0)] * 4
    adapter = fx.loader_adapter(loaders={"test": DataLoader(pairs, batch_size=2)})
    with pytest.raises(DataError, match=r"split 'test' yields list batches; expected dicts"):
        next(iter(adapter.data("test", batch_size=2)))


def test_default_prepare_passes_the_modality_keys_only():
    adapter = fx.loader_adapter()
    batch = next(iter(adapter.data("test", batch_size=4)))
    inputs = adapter.prepare(batch, device=CPU)
    assert set(inputs) == {"image", "tab"}  # not label, bias, nor the id strings
    assert adapter.forward(adapter.build_model(), inputs).shape == (4, fx.NUM_CLASSES)


def test_model_inputs_include_mask_keys_and_leave_non_tensors_as_they_are():
    from biasaudit import Modality

    modalities = [Modality("text", "tokens", key="ids", mask_key="mask", pad_id=0, special_ids=(1,)), Modality("caption", "text")]
    batch = {"ids": torch.ones(2, 3, dtype=torch.long), "mask": torch.ones(2, 3), "caption": ["a", "b"], "label": torch.zeros(2)}
    assert set(model_inputs(batch, modalities, CPU)) == {"ids", "mask", "caption"}


def test_user_prepare_and_forward_override_the_defaults():
    calls = []

    def prepare(batch, device):
        calls.append(device)
        return (batch["image"].to(device), batch["tab"].to(device))

    adapter = fx.loader_adapter(prepare=prepare, forward=lambda model, inputs: {"logits": model(*inputs), "aux": 1})
    batch = next(iter(adapter.data("test", batch_size=3)))
    logits = adapter.forward(adapter.build_model(), adapter.prepare(batch, device=CPU))
    assert calls == [CPU] and logits.shape == (3, fx.NUM_CLASSES)


def test_classifier_and_branches_are_resolved_from_dotted_paths():
    adapter = fx.loader_adapter(branches={"image": "image_branch.1", "tab": "tab_branch"})
    model = adapter.build_model()
    assert adapter.classifier(model) is model.head
    assert adapter.branches(model) == {"image": model.image_branch[1], "tab": model.tab_branch}
    assert fx.loader_adapter(classifier=None, branches=None).classifier(model) is None


def test_a_path_that_names_nothing_gives_the_nearest_names():
    with pytest.raises(AdapterError, match=r"classifier path 'haed' names no submodule of Net \(nearest: head"):
        fx.loader_adapter(classifier="haed").build_model()
    with pytest.raises(AdapterError, match=r"'image' branch path 'image_brnch' .* \(nearest: image_branch"):
        fx.loader_adapter(branches={"image": "image_brnch"}).build_model()
    with pytest.raises(AdapterError, match=r"path 'zzz' .* \(its top-level modules are image_branch, tab_branch, head"):
        fx.loader_adapter(classifier="zzz").build_model()


def test_a_classifier_that_is_not_linear_points_at_the_linear_inside():
    with pytest.raises(AdapterError, match=r"'image_branch' names a Sequential; expected the final nn.Linear; the last nn.Linear inside it is 'image_branch.1'"):
        fx.loader_adapter(classifier="image_branch").build_model()


def test_construction_mistakes_are_one_sentence_each():
    with pytest.raises(AdapterError, match=r"branches name modality 'audio'\. Available: image, tab"):
        fx.loader_adapter(branches={"audio": "head"})
    with pytest.raises(AdapterError, match=r"loaders\['test'\] is a list; expected a torch.utils.data.DataLoader"):
        fx.loader_adapter(loaders={"test": [1, 2]})
    with pytest.raises(AdapterError, match=r"needs loaders="):
        fx.loader_adapter(loaders={})
    with pytest.raises(AdapterError, match=r"model_fn returned a dict; expected a torch.nn.Module"):
        LoaderAdapter(dict, loaders=fx.loaders(), modalities=fx.MODALITIES, num_classes=3).build_model()


# ---- logits_of: what the default forward accepts ----------------------------------------------------------------
@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor | None = None


def test_logits_are_read_from_a_tensor_an_output_object_or_a_dict():
    logits = torch.randn(2, 3)
    assert logits_of(logits) is logits
    assert logits_of(Output(logits=logits)) is logits
    assert logits_of({"logits": logits, "loss": None}) is logits


@pytest.mark.parametrize("output, named", [
    ((torch.randn(2, 3), torch.randn(2, 5)), r"returned a tuple;"),
    ({"last_hidden_state": torch.randn(2, 4, 8)}, r"returned a dict with keys last_hidden_state;"),
    (Output(logits=None), r"returned a Output;"),
    (Output(logits=[[0.1, 0.2]]), r"returned a Output whose \.logits is a list;"),
])
def test_other_outputs_are_refused_naming_the_type_never_the_values(output, named):
    with pytest.raises(AdapterError) as caught:
        logits_of(output)
    message = str(caught.value)
    assert re.search(named, message), message
    assert "expected a logits tensor [batch, classes], or an output with .logits" in message
    assert "tensor(" not in message and "\n" not in message


def test_the_base_adapters_default_forward_reads_logits_too():
    class Wrapped(nn.Module):
        def forward(self, x):
            return Output(logits=x * 2)

    x = torch.ones(2, 3)
    assert torch.equal(Adapter().forward(Wrapped(), {"x": x}), x * 2)
    assert torch.equal(Adapter().forward(Wrapped(), (x,)), x * 2)
    assert torch.equal(Adapter().forward(Wrapped(), x), x * 2)


# ---- through the console script ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("loader") / "model.pt"
    torch.save(fx.trained_net().state_dict(), path)
    return path


def test_scan_of_a_loader_adapter_hashes_the_users_adapter_file(checkpoint, tmp_path):
    result = run("scan", str(checkpoint), "--adapter", f"{FIXTURE}:adapter", "--out", str(tmp_path / "out"), *FAST)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "audit.json").read_text())["manifest"]
    assert manifest["adapter"]["sha256"] == hashlib.sha256(FIXTURE.read_bytes()).hexdigest()  # not biasaudit's loader.py


CLI_CASES = {
    "loader that shuffles": ("Shuffles", r"The DataLoader of split 'test' shuffles \(its sampler is a RandomSampler\); pass shuffle=False"),
    "batch sampler that shuffles": ("ShufflesInBatchSampler", r"split 'test' shuffles \(its sampler is a RandomSampler\); pass shuffle=False"),
    "classifier path that does not exist": ("MisspeltClassifier", r"classifier path 'haed' names no submodule of Net \(nearest: head"),
    "branch path that does not exist": ("MisspeltBranch", r"'image' branch path 'image_brnch' names no submodule of Net \(nearest: image_branch"),
    "output without logits": ("ReturnsTuple", r"The model returned a tuple; expected a logits tensor \[batch, classes\], or an output with \.logits"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_loader_adapter_mistakes_exit_2_with_one_sentence_and_write_nothing(case, checkpoint, tmp_path):
    name, pattern = CLI_CASES[case]
    out = tmp_path / "out"
    if name == "ReturnsTuple":  # its checkpoint has the wrapper's keys
        checkpoint = tmp_path / "tuple.pt"
        torch.save(fx.TupleOutput().state_dict(), checkpoint)
    result = run("scan", str(checkpoint), "--adapter", f"{FIXTURE}:{name}", "--out", str(out), *FAST)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert re.search(pattern, one_sentence(result.stderr)), result.stderr
    assert not out.exists()


def test_loading_names_only_adapters_defined_in_the_file():
    with pytest.raises(AdapterError) as caught:
        load_adapter(f"{FIXTURE}:nothing")
    available = str(caught.value).split("Available: ")[1]
    assert "HandWritten" in available and "adapter" in available and "LoaderAdapter," not in available + ","
