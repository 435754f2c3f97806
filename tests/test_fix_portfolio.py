"""`fix --method groupdro|jtt|dandr|dfr` run on exactly the components of biasaudit.methods: the loop's weights equal
a plain PyTorch loop that calls the same component on the same batches, resume continues exactly (Group DRO's q, JTT
in stage 2), DFR through fix writes DFR.fit's layer, and an adapter lacking what a method needs is refused before
any audit."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import biasaudit as ba
from biasaudit.data.batches import labels_and_bias
from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
from biasaudit.errors import AdapterError, BiasAuditError, InputError
from biasaudit.methods import DFR, JTT, DandR, GroupDRO, classifier_inputs, group_ids
from biasaudit.training.epoch_batches import SAMPLE_INDEX, shuffled_batches, training_batches
from biasaudit.training.loop import train
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.methods import make_method

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from option_choice import expected_choice  # noqa: E402

sys.path.pop(0)

ADAPTER = DigitsCaptionsAdapter()
CPU = torch.device("cpu")
NUM_BIAS = len(ADAPTER.bias_names)


@pytest.fixture(scope="module")
def baseline():
    return train_baseline(ADAPTER, seed=0, epochs=5)


def forward(model, batch):
    return model(*ADAPTER.prepare(batch, device=CPU))


def labels_of(batch):
    return torch.as_tensor(batch["label"]).long()


def plain_loop(model, config, loss_of, *, index=False, epoch_end=None):
    """A user's loop over the fix loop's batches: zero_grad, the method's loss, backward, Adam's step; `epoch_end`
    returns True when it reset the weights (a fresh optimizer then)."""
    torch.manual_seed(config.seed)
    make = lambda: torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)  # noqa: E731
    optimizer = make()
    for epoch in range(config.epochs):
        model.train()
        for batch in shuffled_batches(ADAPTER, config=config, epoch=epoch, index=index):
            optimizer.zero_grad(set_to_none=True)
            loss_of(model, batch, epoch).backward()
            optimizer.step()
        if epoch_end is not None and epoch_end(model, epoch):
            optimizer = make()
    return model


def assert_same_weights(a, b, tolerance=1e-6):
    for key, value in a.state_dict().items():
        assert torch.allclose(value, b.state_dict()[key], atol=tolerance, rtol=0), key


def test_groupdro_in_the_loop_is_the_component_in_a_plain_loop(baseline):
    config = TrainConfig(epochs=2, seed=1)
    labels, bias = labels_and_bias(ADAPTER, "train", batch_size=512, purpose="test")
    gdro = GroupDRO.from_train_groups(group_ids(labels, bias, num_bias=NUM_BIAS), num_groups=10 * NUM_BIAS, eta=0.05)

    def loss_of(model, batch, epoch):
        y = labels_of(batch)
        return gdro.loss(F.cross_entropy(forward(model, batch), y, reduction="none"),
                         group_ids(y, torch.as_tensor(batch["colour"]), num_bias=NUM_BIAS))

    by_hand = plain_loop(copy.deepcopy(baseline), config, loss_of)
    looped, method = copy.deepcopy(baseline), make_method("groupdro", eta=0.05)
    log = train(looped, ADAPTER, method, config=config)
    assert_same_weights(looped, by_hand)
    assert torch.allclose(method.gdro.q, gdro.q, atol=1e-7)
    assert not torch.equal(gdro.q, GroupDRO.from_train_groups(group_ids(labels, bias, num_bias=NUM_BIAS), num_groups=10 * NUM_BIAS).q)
    assert {"q_max", "q_max_group", "loss"} <= set(log[-1])
    assert method.settings()["groups"]["seen_in_train"] == len(np.unique(labels * NUM_BIAS + bias))


def test_groupdro_resume_restores_q_and_gives_the_uninterrupted_weights(baseline, tmp_path, interrupter):
    config = TrainConfig(epochs=2, seed=3)
    straight, first = copy.deepcopy(baseline), make_method("groupdro")
    train(straight, ADAPTER, first, config=config, state_dir=tmp_path / "a")
    steps_per_epoch = -(-len(ADAPTER.split_data("train")) // config.batch_size)
    with pytest.raises(interrupter.Interrupt):
        train(copy.deepcopy(baseline), ADAPTER, make_method("groupdro"), config=config, state_dir=tmp_path / "b",
              progress=interrupter.at(steps_per_epoch + 2))
    resumed, again = copy.deepcopy(baseline), make_method("groupdro")
    train(resumed, ADAPTER, again, config=config, state_dir=tmp_path / "b", resume=True)
    assert_same_weights(resumed, straight, tolerance=0)
    assert torch.equal(again.gdro.q, first.gdro.q)


def jtt_by_hand(model, config, *, upweight, fraction):
    jtt, start = JTT(upweight=upweight, fraction=fraction), copy.deepcopy(model.state_dict())
    first = jtt.stage_one_epochs(config.epochs)

    def loss_of(model, batch, epoch):
        logits, y = forward(model, batch), labels_of(batch)
        if epoch < first:
            return F.cross_entropy(logits, y)
        return jtt.loss(F.cross_entropy(logits, y, reduction="none"), batch[SAMPLE_INDEX])

    def epoch_end(model, epoch):
        if epoch + 1 != first:
            return False
        model.eval()
        with torch.no_grad():
            for batch in training_batches(ADAPTER, config=config, batch_size=256, index=True):
                jtt.record(batch[SAMPLE_INDEX], forward(model, batch), labels_of(batch))
        jtt.finish()
        model.load_state_dict(start)
        return True

    return plain_loop(model, config, loss_of, index=True, epoch_end=epoch_end), jtt


def test_jtt_in_the_loop_is_the_component_in_a_plain_loop_with_both_stages(baseline):
    config = TrainConfig(epochs=3, seed=2)
    by_hand, jtt = jtt_by_hand(copy.deepcopy(baseline), config, upweight=5.0, fraction=0.34)
    looped, method = copy.deepcopy(baseline), make_method("jtt", upweight=5.0, fraction=0.34)
    log = train(looped, ADAPTER, method, config=config)
    assert_same_weights(looped, by_hand)
    assert torch.equal(method.parts.error_set.indices, jtt.error_set.indices) and jtt.error_set.indices.numel() > 0
    assert [e["stage"] for e in log if e["epoch"] == 0] == [1] * sum(e["epoch"] == 0 for e in log)
    assert {e["stage"] for e in log if e["epoch"] > 0} == {2}
    ended = [e["epoch_end"]["jtt"] for e in log if "epoch_end" in e]
    assert len(ended) == 1 and ended[0]["error_set"] == jtt.error_set.indices.numel() == log[-1]["error_set"]


def test_jtt_resume_in_stage_two_gives_the_uninterrupted_weights(baseline, tmp_path, interrupter):
    config = TrainConfig(epochs=3, seed=4)
    straight = copy.deepcopy(baseline)
    train(straight, ADAPTER, make_method("jtt", fraction=0.34), config=config, state_dir=tmp_path / "a")
    steps_per_epoch = -(-len(ADAPTER.split_data("train")) // config.batch_size)
    with pytest.raises(interrupter.Interrupt):  # in epoch 2: stage 1 was epoch 0, epoch 1 (stage 2) is saved
        train(copy.deepcopy(baseline), ADAPTER, make_method("jtt", fraction=0.34), config=config, state_dir=tmp_path / "b",
              progress=interrupter.at(2 * steps_per_epoch + 2))
    resumed, method = copy.deepcopy(baseline), make_method("jtt", fraction=0.34)
    log = train(resumed, ADAPTER, method, config=config, state_dir=tmp_path / "b", resume=True)
    assert method.stage == 2 and [e["step"] for e in log] == list(range(3 * steps_per_epoch))
    assert_same_weights(resumed, straight, tolerance=0)


def test_jtt_without_epochs_for_stage_two_is_refused():
    with pytest.raises(InputError, match="stage 2 none"):
        train(copy.deepcopy(ADAPTER.build_model()), ADAPTER, make_method("jtt"), config=TrainConfig(epochs=1))


def branch_outputs(model, batches):
    branches = ADAPTER.branches(model)
    out = {name: [] for name in branches}
    handles = [m.register_forward_hook(lambda mod, a, o, name=name: out[name].append(o.flatten(1))) for name, m in branches.items()]
    labels = []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            forward(model, batch)
            labels.append(labels_of(batch))
    for handle in handles:
        handle.remove()
    return {name: torch.cat(parts) for name, parts in out.items()}, torch.cat(labels)


def test_dandr_in_the_loop_is_the_component_in_a_plain_loop(baseline):
    config = TrainConfig(epochs=2, seed=0)
    model = copy.deepcopy(baseline)
    dandr = DandR(ADAPTER.branches(model), every=1, max_times=1, seed=config.seed)

    def epoch_end(model, epoch):
        if dandr.due(epoch) and epoch + 1 < config.epochs:
            train_features, train_labels = branch_outputs(model, training_batches(ADAPTER, config=config, batch_size=256))
            val_features, val_labels = branch_outputs(model, ADAPTER.data("val", batch_size=256))
            dandr.epoch_end(epoch, train_features, train_labels, val_features, val_labels)
        return False

    by_hand = plain_loop(model, config, lambda m, b, e: F.cross_entropy(forward(m, b), labels_of(b)), epoch_end=epoch_end)
    looped = copy.deepcopy(baseline)
    log = train(looped, ADAPTER, make_method("dandr", every=1, max_times=1), config=config)
    assert_same_weights(looped, by_hand)
    ended = [e["epoch_end"]["dandr"] for e in log if "epoch_end" in e]
    assert len(ended) == 1 and ended[0]["alpha"] == pytest.approx(dandr.last.alpha) and ended[0]["validated_on"] == "val"


def test_dfr_through_fix_writes_the_layer_dfr_fit_gives_on_the_same_features(baseline):
    features = classifier_inputs(baseline, baseline.classifier, ADAPTER.data("val", batch_size=256), forward=forward)
    val = ADAPTER.split_data("val")
    labels, groups = np.asarray(val.labels, dtype=np.int64), np.asarray(val.labels) * NUM_BIAS + np.asarray(val.colours)
    keep = np.bincount(groups)[groups] >= 2  # DFR's tuning halves need two samples per group; the rest are left out
    expected = DFR(seed=5).fit(features[keep], labels[keep], groups[keep], num_classes=10)
    result = ba.fix(baseline, ADAPTER, method="dfr", seed=5, conditions="missing", bootstrap=10, projection="pca", split="ood")
    assert torch.allclose(result.model.classifier.weight.double(), torch.as_tensor(expected.weight), atol=1e-6)
    assert torch.allclose(result.model.classifier.bias.double(), torch.as_tensor(expected.bias), atol=1e-6)
    for key, value in baseline.state_dict().items():  # everything below the layer is untouched
        if not key.startswith("classifier."):
            assert torch.equal(value, result.model.state_dict()[key]), key
    training = result.train_log["training"]
    assert result.train_log["steps"] == [] and training["loop"].startswith("none: dfr refits")
    assert training["settings"]["chosen_c"] == expected.c and training["settings"]["note"] == expected.note
    assert training["settings"]["groups_left_out"]["samples"] == int((~keep).sum())


def test_dfr_without_a_val_split_fits_a_seeded_fifth_of_train_and_says_so(baseline):
    class NoVal(DigitsCaptionsAdapter):
        splits = ("train", "test", "ood")

    method = make_method("dfr")
    model = copy.deepcopy(baseline)
    method.refit(model, NoVal(), config=TrainConfig(seed=0))
    assert method.settings()["fitted_on"] == "20% of train (seed 0)" and "on 20% of train (seed 0)" in method.settings()["note"]


class NoBiasKey(DigitsCaptionsAdapter):
    bias_key = None


class NoBiasKeyNoBranches(NoBiasKey):
    def branches(self, model):
        return None


class NoHooks(DigitsCaptionsAdapter):
    def branches(self, model):
        return None

    def classifier(self, model):
        return None


@pytest.mark.parametrize("adapter, method, options, epochs, needle", [
    (NoBiasKey(), "groupdro", {"bias": "key"}, 2, "Group DRO with bias='key' needs a bias value per sample"),
    (NoBiasKeyNoBranches(), "groupdro", {}, 2, "Group DRO needs a (label, bias value) group per sample"),
    (NoBiasKeyNoBranches(), "dfr", {}, 2, "DFR needs a (label, bias value) group per sample"),
    (NoHooks(), "dandr", {"every": 1}, 2, "D&R needs one module per modality"),
    (NoHooks(), "dfr", {}, 2, "DFR refits the model's final linear layer"),
    (DigitsCaptionsAdapter(), "jtt", {}, 1, "stage 2 none"),
    (DigitsCaptionsAdapter(), "dandr", {"every": 20}, 20, "needs epochs after that to re-learn"),
])
def test_what_a_method_needs_and_the_adapter_lacks_is_refused_in_one_sentence_before_any_audit(adapter, method, options, epochs,
                                                                                               needle, baseline, monkeypatch):
    def no_audit(*args, **kwargs):
        raise AssertionError("audited before refusing")

    monkeypatch.setattr("biasaudit.training.fix.audit_model", no_audit)
    with pytest.raises(BiasAuditError) as caught:
        ba.fix(baseline, adapter, method=method, options=options, epochs=epochs, conditions="missing", bootstrap=10, split="ood")
    message = str(caught.value)
    assert needle in message and "\n" not in message and message.count(". ") == 0 and message.endswith(".")
    assert isinstance(caught.value, (AdapterError, InputError))


SCRIPT = Path(sys.executable).parent / "biasaudit"
CLI_ADAPTER = f"{Path(__file__).parents[1] / 'examples' / 'digits_captions_adapter.py'}:adapter"


def test_fix_cli_groupdro_end_to_end(baseline, tmp_path):
    checkpoint = tmp_path / "baseline.pt"
    torch.save(baseline.state_dict(), checkpoint)
    out = tmp_path / "gdro"
    result = subprocess.run([str(SCRIPT), "fix", str(checkpoint), "--adapter", CLI_ADAPTER, "--method", "groupdro", "--eta", "0.05",
                             "--epochs", "2", "--conditions", "missing", "--split", "ood", "--bootstrap", "10", "--scan-projection", "pca",
                             "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    compare = json.loads((out / "compare.json").read_text())
    log = json.loads((out / "train_log.json").read_text())
    assert compare["summary"]["full"]["after"] is not None
    assert log["training"]["method"] == "groupdro" and log["training"]["settings"]["eta"] == 0.05
    assert all("q_max" in step for step in log["steps"])


@pytest.mark.parametrize("epochs, every", [(20, 5), (60, 15), (3, 1)])
def test_dandr_by_default_spreads_its_reinitialisations_over_the_run(epochs, every):
    # Before: the default R = 20 refused fix's default 20 epochs; a user running `fix --method dandr` got an error.
    method = make_method("dandr")
    method.check_config(TrainConfig(epochs=epochs))
    assert method.every == every
    assert make_method("dandr", every=7).every == 7


def test_fix_cli_chooses_ogm_ges_alpha_on_val_and_keeps_the_winner(baseline, tmp_path):
    # `--alpha auto`, as `--scale auto`: one candidate per grid value, ranked on val, the winner kept (not retrained).
    checkpoint = tmp_path / "baseline.pt"
    torch.save(baseline.state_dict(), checkpoint)
    out = tmp_path / "ogm"
    result = subprocess.run([str(SCRIPT), "fix", str(checkpoint), "--adapter", CLI_ADAPTER, "--method", "ogm_ge", "--alpha", "auto",
                             "--epochs", "1", "--conditions", "missing", "--bootstrap", "10", "--scan-projection", "pca",
                             "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    log = json.loads((out / "train_log.json").read_text())
    selection = log["training"]["option_selection"]
    assert selection["option"] == "alpha" and selection["grid"] == [0.1, 0.3, 0.8] and selection["validated_on"] == "val"
    assert selection["criterion"].startswith("bias-balanced accuracy")
    assert selection["chosen"] == expected_choice(selection) and selection["default"] == 0.3
    assert log["training"]["settings"]["alpha"] == selection["chosen"]
    assert f"ogm_ge alpha auto chose alpha={selection['chosen']:g}" in result.stderr
    bad = subprocess.run([str(SCRIPT), "fix", str(checkpoint), "--adapter", CLI_ADAPTER, "--method", "ogm_ge", "--alpha", "big",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--alpha 'big' is neither 'auto' nor a number." in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_an_auto_option_keeps_the_candidate_a_fresh_training_of_the_chosen_value_gives(baseline):
    from biasaudit.training.selection import choose_option

    config = TrainConfig(epochs=1)
    choice = choose_option(copy.deepcopy(baseline), ADAPTER, method="groupdro", options={}, config=config, grid=(0.001, 0.1))
    assert choice.selection["option"] == "eta" and choice.selection["grid"] == [0.001, 0.1]
    assert choice.selection["bias_source"] == f"adapter bias_key {ADAPTER.bias_key!r}"
    again, method = copy.deepcopy(baseline), make_method("groupdro", eta=choice.selection["chosen"])
    train(again, ADAPTER, method, config=config)
    for (name, kept), fresh in zip(choice.model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(kept, fresh), name


def test_without_bias_values_candidates_are_ranked_by_accuracy_and_the_record_says_so(baseline):
    from biasaudit.training.selection import CRITERION_WITHOUT_BIAS, choose_option

    class NoBias(DigitsCaptionsAdapter):
        bias_key = None

    choice = choose_option(copy.deepcopy(baseline), NoBias(), method="ogm_ge", options={}, config=TrainConfig(epochs=1), grid=(0.1, 0.8))
    assert choice.selection["criterion"] == CRITERION_WITHOUT_BIAS and choice.selection["bias_source"] is None
