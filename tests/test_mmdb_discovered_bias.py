"""`fix --method mmdb` on data without a bias attribute: margins come from k-means clusters of the dominant
modality's branch embeddings (methods.md sections 3 and 6). If the clusters were assigned by the live
model, by batch position, or not recorded, a user would get margins that do not describe their data,
or a fixed model whose manifest hides that its bias values were guessed."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from biasaudit import Adapter, Modality
from biasaudit.errors import AdapterError, CheckpointError, InputError
from biasaudit.training import mmdb
from biasaudit.data.batches import take_rows
from biasaudit.training.loop import train
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.methods import make_method

CPU = torch.device("cpu")
# Per split: (label, blob) counts. Blob 0 sits near (+5, +5) in modality b, blob 1 near (-5, -5); the blob
# is the hidden bias the clusters must recover. Train: blob 0 holds 15 of label 0 and 5 of label 1,
# blob 1 holds 4 of label 0 and 16 of label 1.
COUNTS = {"train": {(0, 0): 15, (1, 0): 5, (0, 1): 4, (1, 1): 16},
          "val": {(0, 0): 6, (1, 0): 4, (0, 1): 3, (1, 1): 7},
          "test": {(0, 0): 12, (1, 0): 4, (0, 1): 3, (1, 1): 13}}


def split_tensors(split: str) -> dict[str, torch.Tensor]:
    labels = torch.tensor([y for (y, g), n in COUNTS[split].items() for _ in range(n)])
    blobs = torch.tensor([g for (y, g), n in COUNTS[split].items() for _ in range(n)])
    jitter = torch.randn(len(labels), 2, generator=torch.Generator().manual_seed(len(split)))
    b = torch.where(blobs[:, None] == 0, 5.0, -5.0) + 0.3 * jitter
    a = nn.functional.one_hot(labels, 2).float()
    return {"a": a, "b": b, "y": labels, "g": blobs}


class LeansOnB(nn.Module):
    """Identity branches; the classifier weighs b's blob (4 logits apart) over a's one-hot label (1 apart)."""

    def __init__(self) -> None:
        super().__init__()
        self.a_branch, self.b_branch = nn.Linear(2, 2), nn.Linear(2, 2)
        self.classifier = nn.Linear(4, 2)
        with torch.no_grad():
            for branch in (self.a_branch, self.b_branch):
                branch.weight.copy_(torch.eye(2))
                branch.bias.zero_()
            self.classifier.weight.copy_(torch.tensor([[1.0, 0.0, 0.2, 0.2], [0.0, 1.0, -0.2, -0.2]]))
            self.classifier.bias.zero_()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.a_branch(a), self.b_branch(b)], dim=1))


class NoBiasKey(Adapter):
    """Batches carry the blob as "g", but the adapter does not declare it: the bias must be discovered."""

    modalities = [Modality("a", "tensor", key="a"), Modality("b", "tensor", key="b")]
    num_classes = 2
    label_key = "y"
    splits = ("train", "val", "test")

    def build_model(self) -> nn.Module:
        return LeansOnB()

    def data(self, split: str, *, batch_size: int):
        tensors = split_tensors(split)
        for lo in range(0, len(tensors["y"]), batch_size):
            yield {key: value[lo: lo + batch_size] for key, value in tensors.items()}

    def prepare(self, batch, *, device):
        return batch["a"].to(device), batch["b"].to(device)

    def classifier(self, model):
        return model.classifier

    def branches(self, model):
        return {"a": model.a_branch, "b": model.b_branch}


class BlobKey(NoBiasKey):
    bias_key = "g"


class NoBranches(NoBiasKey):
    branches = None


def prepared(**options):
    torch.manual_seed(0)  # what the loop does before prepare(): it seeds k-means
    method = make_method("mmdb", **{"dominant": "b", "kmeans_k": 2, **options})
    method.prepare(LeansOnB(), NoBiasKey(), device=CPU)
    return method


def test_margins_from_discovered_clusters_are_the_hand_counted_blob_margins():
    method = prepared()
    bias = method.discovered.train_bias
    blob0, blob1 = bias[0], bias[-1]
    assert blob0 != blob1 and list(bias) == [blob0] * 20 + [blob1] * 20, "k-means must recover the two blobs"
    table = method.table
    assert table.counts[blob0].tolist() == [15, 5] and table.counts[blob1].tolist() == [4, 16]
    eps = mmdb.DEFAULT_EPS
    expected = {blob0: [1 - (15 + eps) / (20 + eps), 1 - (5 + eps) / (20 + eps)],
                blob1: [1 - (4 + eps) / (20 + eps), 1 - (16 + eps) / (20 + eps)]}
    for row, margins in expected.items():
        assert torch.allclose(table.margins[row], torch.tensor(margins)), (row, table.margins[row])
    settings = method.settings()
    assert settings["k"] == 2 and settings["cluster_sizes"] == [20, 20] and settings["dominant_modality"] == "b"
    assert "k-means clusters (k=2) of the b branch's embeddings under the starting model" in settings["bias_source"]


def test_a_samples_bias_value_depends_neither_on_its_batch_nor_on_the_model_being_trained():
    torch.manual_seed(0)
    model = LeansOnB()
    method = make_method("mmdb", dominant="b", kmeans_k=2)
    method.prepare(model, NoBiasKey(), device=CPU)
    batch = split_tensors("train")
    truth = np.where(batch["g"].numpy() == 0, method.discovered.train_bias[0], method.discovered.train_bias[-1])
    shuffled_rows = np.random.default_rng(1).permutation(40)[:7]
    assert method.batch_bias(take_rows(batch, shuffled_rows), NoBiasKey(), split="train", device=CPU).tolist() == truth[shuffled_rows].tolist()
    with torch.no_grad():
        model.b_branch.weight.zero_()  # training moves the live branch; the frozen starting copy must not follow
    assert method.batch_bias(batch, NoBiasKey(), split="train", device=CPU).tolist() == truth.tolist()


def test_training_without_a_bias_key_changes_the_weights_exactly_as_the_true_bias_key_would():
    """The clusters equal the blobs, so per-sample margins equal those of the declared blob key (the
    cluster numbering may differ): the trained weights must be identical, and the manifest says k-means."""
    config = TrainConfig(epochs=2, batch_size=8, seed=0)
    start = LeansOnB()
    discovered, keyed = copy.deepcopy(start), copy.deepcopy(start)
    method = make_method("mmdb", dominant="b", kmeans_k=2)
    log = train(discovered, NoBiasKey(), method, config=config)
    train(keyed, BlobKey(), make_method("mmdb", dominant="b", kmeans_k=2), config=config)
    assert log and any(not torch.equal(v, start.state_dict()[k]) for k, v in discovered.state_dict().items())
    for key, value in keyed.state_dict().items():
        assert torch.equal(value, discovered.state_dict()[key]), key
    settings = method.settings()
    assert settings["bias"] == "auto" and "k-means" in settings["bias_source"] and sorted(settings["cluster_sizes"]) == [20, 20]
    json.dumps(settings)  # it goes into train_log.json and the after-audit manifest


def test_a_declared_bias_key_is_used_and_named_when_bias_is_auto():
    method = make_method("mmdb", dominant="b")
    train(LeansOnB(), BlobKey(), method, config=TrainConfig(epochs=1, batch_size=8))
    settings = method.settings()
    assert settings["bias_source"] == "adapter bias_key 'g'" and settings["k"] is None and settings["cluster_sizes"] is None


def test_an_adapter_with_neither_bias_key_nor_branches_gets_one_sentence_naming_both_fixes():
    with pytest.raises(AdapterError) as error:
        train(LeansOnB(), NoBranches(), make_method("mmdb", dominant="b"), config=TrainConfig(epochs=1))
    message = str(error.value)
    assert "declare the adapter's bias_key" in message and "branches(model) hook" in message
    assert message.endswith(".") and message.count(". ") == 0, "one sentence"


def test_no_dominant_modality_or_a_branch_missing_from_the_hook_is_an_adapter_error():
    with pytest.raises(AdapterError, match="found no dominant modality"):
        train(LeansOnB(), NoBiasKey(), make_method("mmdb"), config=TrainConfig(epochs=1))
    with pytest.raises(AdapterError, match="no entry for the dominant modality 'c'"):
        train(LeansOnB(), NoBiasKey(), make_method("mmdb", dominant="c"), config=TrainConfig(epochs=1))
    with pytest.raises(AdapterError, match="bias='key'"):
        train(LeansOnB(), NoBiasKey(), make_method("mmdb", bias="key"), config=TrainConfig(epochs=1))
    with pytest.raises(InputError, match="Available: auto, key, kmeans"):
        make_method("mmdb", bias="colour")


def test_option_selection_groups_validation_samples_by_the_discovered_clusters():
    from biasaudit.training.selection import bias_balanced_score, choose_option

    config = TrainConfig(epochs=2, batch_size=8)
    result = choose_option(LeansOnB(), NoBiasKey(), method="mmdb", options={"dominant": "b", "kmeans_k": 2}, config=config, grid=(1, 8)).selection
    assert result["grid"] == [1.0, 8.0] and result["validated_on"] == "val" and "k-means" in result["bias_source"]
    assert all(0.0 <= s <= 100.0 for s in result["scores"].values())
    # The score must equal the bias-balanced accuracy over the true (label, blob) groups.
    model = LeansOnB()
    method = make_method("mmdb", dominant="b", kmeans_k=2, scale=8.0)
    train(model, NoBiasKey(), method, config=config)
    val = split_tensors("val")
    predictions = method.cosines(model, NoBiasKey(), val, device=CPU).argmax(1).numpy()
    by_blob = mmdb.bias_balanced_accuracy(predictions, val["y"].numpy(), val["g"].numpy(), min_group=1)
    assert bias_balanced_score(model, NoBiasKey(), method, NoBiasKey().data("val", batch_size=3), device=CPU, min_group=1) == by_blob
    assert result["scores"][8.0] == by_blob


def test_resume_with_discovered_bias_gives_the_uninterrupted_weights_and_refuses_another_bias_source(tmp_path, interrupter):
    config = TrainConfig(epochs=2, batch_size=8, seed=1)
    straight = LeansOnB()
    train(straight, NoBiasKey(), make_method("mmdb", dominant="b", kmeans_k=2), config=config)

    with pytest.raises(interrupter.Interrupt):  # 40 samples / 8 = 5 steps per epoch: step 6 is in epoch two
        train(LeansOnB(), NoBiasKey(), make_method("mmdb", dominant="b", kmeans_k=2), config=config, state_dir=tmp_path,
              progress=interrupter.at(6))
    resumed = LeansOnB()
    train(resumed, NoBiasKey(), make_method("mmdb", dominant="b", kmeans_k=2), config=config, state_dir=tmp_path, resume=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    with pytest.raises(CheckpointError, match="bias_source .*k-means clusters.* -> \"adapter bias_key 'g'\""):
        train(LeansOnB(), BlobKey(), make_method("mmdb"), config=config, state_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="kmeans_k 2 -> 3"):  # another k: other clusters, other margins
        train(LeansOnB(), NoBiasKey(), make_method("mmdb", dominant="b", kmeans_k=3), config=config, state_dir=tmp_path, resume=True)
    # Behind the settings check, the saved clusters themselves must match the refitted ones.
    method = make_method("mmdb", dominant="b", kmeans_k=2)
    method.prepare(LeansOnB(), NoBiasKey(), device=torch.device("cpu"))
    state = method.extra_state()
    with pytest.raises(CheckpointError, match="other k-means bias clusters"):
        method.load_extra_state({**state, "bias_centroids": state["bias_centroids"] + 1.0})
    method.load_extra_state(state)  # the very clusters: accepted


def test_fix_without_a_bias_key_clusters_the_audits_dominant_modality_and_records_it(tmp_path):
    from biasaudit.training.fix_outputs import run_fix
    from biasaudit.scanning.config import ScanConfig

    checkpoint = tmp_path / "start.pt"
    torch.save(LeansOnB().state_dict(), checkpoint)
    scan = ScanConfig(split="test", conditions="missing", projection="pca", bootstrap_replicates=20, gradient_batches=1, kmeans_k=2)
    paths = run_fix(checkpoint, NoBiasKey(), method="mmdb", method_options={"scale": "auto"}, scan_config=scan,
                    train_config=TrainConfig(epochs=1, batch_size=8), out_dir=tmp_path / "out").paths
    before, after = (json.loads(paths[name].read_text()) for name in ("before", "after"))
    assert before["summary"]["missing"]["dominant"] == "b"
    training = after["manifest"]["training"]
    assert training["settings"]["dominant_modality"] == "b" and training["settings"]["k"] == 2
    assert "b branch" in training["settings"]["bias_source"]
    assert training["option_selection"]["chosen"] == training["settings"]["scale"]


def test_fix_refuses_an_adapter_without_bias_key_or_branches_before_auditing(tmp_path):
    from biasaudit.training.fix_outputs import run_fix
    from biasaudit.scanning.config import ScanConfig

    checkpoint = tmp_path / "start.pt"
    torch.save(LeansOnB().state_dict(), checkpoint)
    with pytest.raises(AdapterError, match="no branches"):
        run_fix(checkpoint, NoBranches(), method="mmdb", method_options={"scale": 4.0}, scan_config=ScanConfig(split="test"),
                train_config=TrainConfig(epochs=1), out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
