"""The `fix` training loop and its methods on the demo model (issue 3's required tests). If the loop lost
its place on resume, a method silently did nothing, or MMDB's export changed what the model predicts, a
user would ship a model that is not the one that was evaluated."""

from __future__ import annotations

import sys
from pathlib import Path

import copy
import re

import numpy as np
import pytest
import torch

from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
from biasaudit.errors import AdapterError
from biasaudit.training.loop import train
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.methods import make_method

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from option_choice import expected_choice  # noqa: E402

sys.path.pop(0)

ADAPTER = DigitsCaptionsAdapter()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def baseline():
    return train_baseline(ADAPTER, seed=0, epochs=5)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["ce", "mmdb", "balgrad"])
def test_two_epochs_change_the_weights(method, baseline):
    model = copy.deepcopy(baseline)
    before = weights(model)
    log = train(model, ADAPTER, make_method(method), config=TrainConfig(epochs=2, seed=0))
    assert len(log) > 0 and {entry["epoch"] for entry in log} == {0, 1}
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", ["ce", "mmdb", "balgrad"])
def test_resume_after_epoch_one_gives_the_uninterrupted_weights(method, baseline, tmp_path, interrupter):
    config = TrainConfig(epochs=2, seed=3)
    straight = copy.deepcopy(baseline)
    train(straight, ADAPTER, make_method(method), config=config, state_dir=tmp_path / "a")

    interrupted = copy.deepcopy(baseline)
    steps_per_epoch = -(-len(ADAPTER.split_data("train")) // config.batch_size)

    with pytest.raises(interrupter.Interrupt):
        train(interrupted, ADAPTER, make_method(method), config=config, state_dir=tmp_path / "b",
              progress=interrupter.at(steps_per_epoch + 2))
    resumed = copy.deepcopy(baseline)  # a fresh process would rebuild the model from the input checkpoint
    log = train(resumed, ADAPTER, make_method(method), config=config, state_dir=tmp_path / "b", resume=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [e["step"] for e in log] == list(range(2 * steps_per_epoch))


def test_frozen_parameters_stay_frozen(baseline):
    model = copy.deepcopy(baseline)
    for p in model.image_branch.parameters():
        p.requires_grad_(False)
    before = weights(model)
    train(model, ADAPTER, make_method("ce"), config=TrainConfig(epochs=1))
    for key, value in model.state_dict().items():
        if key.startswith("image_branch"):
            assert torch.equal(value, before[key]), key


def test_mmdb_export_predicts_exactly_what_the_trained_cosine_model_predicts(baseline):
    model = copy.deepcopy(baseline)
    method = make_method("mmdb", scale=4.0)
    train(model, ADAPTER, method, config=TrainConfig(epochs=2))
    model.eval()
    with torch.no_grad():
        cosine_predictions, exported_predictions = [], []
        batches = list(ADAPTER.data("ood", batch_size=128))
        for batch in batches:
            cosine_predictions.append(method.cosines(model, ADAPTER, batch, device=CPU).argmax(1))
        method.export(model, ADAPTER)
        for batch in batches:
            exported_predictions.append(ADAPTER.forward(model, ADAPTER.prepare(batch, device=CPU)).argmax(1))
    assert torch.equal(torch.cat(cosine_predictions), torch.cat(exported_predictions))
    assert torch.count_nonzero(model.classifier.bias) == 0
    assert torch.allclose(model.classifier.weight.norm(dim=1), torch.ones(10))


def test_balgrad_without_branches_names_the_hook_to_add(baseline):
    class NoBranches(DigitsCaptionsAdapter):
        branches = None

    with pytest.raises(AdapterError, match=r"branches\(model\) hook"):
        train(copy.deepcopy(baseline), NoBranches(), make_method("balgrad"), config=TrainConfig(epochs=1))


def test_scale_auto_trains_every_candidate_and_keeps_the_best_by_bias_balanced_accuracy(baseline):
    from biasaudit.training.selection import choose_option

    config = TrainConfig(epochs=2)
    choice = choose_option(copy.deepcopy(baseline), ADAPTER, method="mmdb", options={}, config=config, grid=(1, 4, 32))
    result = choice.selection
    assert result["grid"] == [1.0, 4.0, 32.0] and result["validated_on"] == "val"
    assert result["chosen"] == expected_choice(result) and result["default"] == 4.0
    assert len(set(result["scores"].values())) > 1, "different scales must give different models"
    # The winner is kept, not trained again (a seventh training cost a sixth more time): it is the model that
    # training the chosen scale from the same start gives, with its method and step log.
    again, method = copy.deepcopy(baseline), make_method("mmdb", scale=result["chosen"])
    steps = train(again, ADAPTER, method, config=config)
    assert choice.method.scale == result["chosen"] and choice.steps == steps
    for key, value in again.state_dict().items():
        assert torch.equal(value, choice.model.state_dict()[key]), key


def test_without_a_val_split_candidates_are_validated_on_held_out_train_samples_they_never_saw(baseline):
    from biasaudit.training.epoch_batches import shuffled_batches
    from biasaudit.training.selection import selection_plan, validation_batches

    class NoVal(DigitsCaptionsAdapter):
        splits = ("train", "test", "ood")

    adapter = NoVal()
    config, source = selection_plan(adapter, TrainConfig(epochs=1))
    assert source.startswith("held-out")
    def keys(batches):
        return {(tuple(b["image"][i].flatten().tolist()), b["caption"][i]) for b in batches for i in range(len(b["caption"]))}
    trained, held = keys(shuffled_batches(adapter, config=config, epoch=0)), keys(validation_batches(adapter, config, source))
    assert held and not (trained & held)
    assert len(trained) + len(held) == len(adapter.split_data("train"))


def test_before_after_deltas_get_paired_intervals_that_are_zero_for_an_unchanged_model(baseline):
    """The same model audited twice: every paired delta interval is exactly [0, 0]; an unpaired
    comparison (two independent intervals) could never show that."""
    from biasaudit.scanning.audit import audit_model
    from biasaudit.comparing import compare_audits
    from biasaudit.scanning.config import ScanConfig

    config = ScanConfig(split="ood", conditions="missing", projection="pca", bootstrap_replicates=100, gradient_batches=1)
    first = audit_model(copy.deepcopy(baseline), ADAPTER, config=config, checkpoint=None)
    second = audit_model(copy.deepcopy(baseline), ADAPTER, config=config, checkpoint=None)
    comparison = compare_audits(first, second)
    assert comparison["paired"] is True
    assert all(row["delta_ci"] == (0.0, 0.0) for row in comparison["conditions"])
    assert comparison["summary"]["missing"]["gap"]["delta_ci"] == (0.0, 0.0)
    changed = copy.deepcopy(baseline)
    train(changed, ADAPTER, make_method("mmdb", scale=4.0), config=TrainConfig(epochs=2))
    moved = compare_audits(first, audit_model(changed, ADAPTER, config=config, checkpoint=None))
    lo, hi = moved["summary"]["full"]["delta_ci"]
    assert lo <= moved["summary"]["full"]["delta"] <= hi and hi - lo > 0


def test_mmdb_on_an_empty_train_split_says_so_instead_of_crashing(baseline):
    from biasaudit.errors import DataError

    class EmptyTrain(DigitsCaptionsAdapter):
        def data(self, split, *, batch_size):
            return iter(()) if split == "train" else super().data(split, batch_size=batch_size)

    with pytest.raises(DataError, match="Split 'train' is empty; MMDB's margins need its labels and bias values"):
        train(copy.deepcopy(baseline), EmptyTrain(), make_method("mmdb"), config=TrainConfig(epochs=1))


def test_the_live_line_shows_this_epochs_mean_losses(baseline):
    """The bar's live line must show the running mean of the logged losses of the current epoch; a stale
    or wrong figure would tell the user training converges when it does not."""
    calls = []
    log = train(copy.deepcopy(baseline), ADAPTER, make_method("balgrad"), config=TrainConfig(epochs=2, seed=0),
                progress=lambda *args: calls.append(args))
    assert [c[1] for c in calls] == list(range(1, len(log) + 1)) and {c[0] for c in calls} == {"train"}
    for epoch in (0, 1):
        steps = [e for e in log if e["epoch"] == epoch]
        status = calls[steps[-1]["step"]][3]
        mean = lambda key: sum(float(e[key]) for e in steps) / len(steps)  # noqa: E731
        assert status.startswith(f"epoch {epoch + 1}/2 · loss {mean('loss'):.3f} · L_v {mean('loss_v'):.3f} · L_l {mean('loss_l'):.3f}")
        assert f"λ {mean('lam'):.2f}" in status and f"conflicts {mean('conflicted'):.0%}" in status
    first = calls[0][3]
    assert f"loss {log[0]['loss']:.3f}" in first  # one step in: the mean is that step's loss


def test_a_three_argument_progress_callback_still_works(baseline):
    """A library user's `lambda stage, done, total: ...` must not crash training now that the loop also
    reports a status line."""
    calls = []
    log = train(copy.deepcopy(baseline), ADAPTER, make_method("ce"), config=TrainConfig(epochs=1),
                progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert calls == [("train", i + 1, len(log)) for i in range(len(log))]


@pytest.mark.parametrize("change, needle", [({"lr": 0.01}, "--lr 0.003 -> 0.01"), ({"method": "mmdb"}, "written by method 'ce'"),
                                            ({"epochs": 3}, "--epochs 2 -> 3")])
def test_resume_with_other_options_is_refused_naming_what_changed(change, needle, baseline, tmp_path):
    """Resuming at another learning rate would train a model the log does not describe."""
    from biasaudit.errors import CheckpointError

    train(copy.deepcopy(baseline), ADAPTER, make_method("ce"), config=TrainConfig(epochs=2, batch_size=256), state_dir=tmp_path)
    method = make_method(change.pop("method", "ce"))
    config = TrainConfig(**{"epochs": 2, "batch_size": 256, **change})
    with pytest.raises(CheckpointError, match=re.escape(needle)):
        train(copy.deepcopy(baseline), ADAPTER, method, config=config, state_dir=tmp_path, resume=True)


@pytest.mark.parametrize("shuffle_buffer, batch_size", [(100, 64), (150, 32), (10**6, 64), (64, 64)])
def test_count_steps_agrees_with_the_loop_when_train_exceeds_the_shuffle_buffer(shuffle_buffer, batch_size):
    """The buffer flushes once it holds at least shuffle_buffer samples, so it can hold more: a count that assumed
    exact buffers counted more steps than the loop makes, and BalGrad's lambda never reached 1."""
    from biasaudit.training.epoch_batches import count_steps, shuffled_batches

    config = TrainConfig(epochs=1, batch_size=batch_size, shuffle_buffer=shuffle_buffer)
    assert count_steps(ADAPTER, config=config) == sum(1 for _ in shuffled_batches(ADAPTER, config=config, epoch=0))


@pytest.mark.parametrize("bias", ["key", "kmeans"])
def test_without_a_val_split_mmdb_margins_and_clusters_never_see_the_held_out_samples(bias, baseline):
    """`--scale auto` validates on held-out train samples; margins or k-means clusters fitted on them would leak the
    validation set into training (the scale would be chosen on samples whose bias statistics shaped the loss)."""
    from biasaudit.training.epoch_batches import holdout_rows
    from biasaudit.training.selection import selection_plan

    class NoVal(DigitsCaptionsAdapter):
        splits = ("train", "test", "ood")

    adapter = NoVal()
    config, _ = selection_plan(adapter, TrainConfig(epochs=1))
    n = len(adapter.split_data("train"))
    kept = int((~holdout_rows(np.arange(n), config=config)).sum())
    assert 0 < kept < n
    method = make_method("mmdb", scale=4.0, bias=bias, dominant="text", kmeans_k=4)
    train(copy.deepcopy(baseline), adapter, method, config=config)
    assert int(method.table.counts.sum()) == kept
    if bias == "kmeans":
        assert len(method.discovered.train_labels) == kept


class AugmentsWithGlobalGenerators(DigitsCaptionsAdapter):
    """Training batches get noise from numpy's and Python's global generators, as augmentation code often does."""

    def data(self, split, *, batch_size):
        import random

        for batch in super().data(split, batch_size=batch_size):
            if split == "train":
                noise = torch.from_numpy(np.random.normal(0.0, 0.1, size=tuple(batch["image"].shape))).float()
                batch = {**batch, "image": batch["image"] + noise * random.random()}
            yield batch


def test_resume_restores_numpy_and_python_generators_and_the_callers_generators_are_handed_back(baseline, tmp_path, interrupter):
    import random

    adapter, config = AugmentsWithGlobalGenerators(), TrainConfig(epochs=2, seed=5)
    steps_per_epoch = -(-len(adapter.split_data("train")) // config.batch_size)
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    callers = (np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state())
    straight = copy.deepcopy(baseline)
    train(straight, adapter, make_method("ce"), config=config, state_dir=tmp_path / "a")
    assert np.array_equal(np.random.get_state()[1], callers[0]) and random.getstate() == callers[1]
    assert torch.equal(torch.get_rng_state(), callers[2]), "training left the caller's torch generator changed"

    np.random.seed(999)  # whatever the caller's generators hold, the run draws the same numbers
    with pytest.raises(interrupter.Interrupt):
        train(copy.deepcopy(baseline), adapter, make_method("ce"), config=config, state_dir=tmp_path / "b",
              progress=interrupter.at(steps_per_epoch + 2))
    from biasaudit.training.training_state import load_training_state

    state = load_training_state(tmp_path / "b")
    assert {"torch", "cuda", "numpy", "python"} <= set(state["rng"])
    random.seed(7)
    resumed = copy.deepcopy(baseline)
    train(resumed, adapter, make_method("ce"), config=config, state_dir=tmp_path / "b", resume=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_an_mmdb_after_audit_scores_the_cosine_model_it_trained_and_says_so(baseline, tmp_path):
    """The exported nn.Linear predicts MMDB's labels with another softmax (‖x‖·cos θ); an after-audit of it would
    report a soft JSD the trained model does not have. fix audits s·cos θ and names it; a scan of model.pt agrees
    on every label-based number."""
    import json

    from biasaudit.scanning.audit import audit_model
    from biasaudit.training.fix_outputs import run_fix
    from biasaudit.scanning.config import ScanConfig

    checkpoint = tmp_path / "base.pt"
    torch.save(baseline.state_dict(), checkpoint)
    scan_config = ScanConfig(split="ood", conditions="missing", bootstrap_replicates=20, projection="pca", min_wrong=1)
    paths = run_fix(checkpoint, ADAPTER, method="mmdb", method_options={"scale": 4.0}, train_config=TrainConfig(epochs=1),
                    scan_config=scan_config, out_dir=tmp_path / "fix").paths
    after = json.loads(paths["after"].read_text())
    assert "cosine classifier s·cos θ (s = 4)" in after["manifest"]["scored_model"]
    assert "cosine classifier" in (tmp_path / "fix" / "after.html").read_text()
    exported = ADAPTER.build_model()
    exported.load_state_dict(torch.load(paths["model"], weights_only=True))
    plain = audit_model(exported, ADAPTER, config=scan_config, checkpoint=paths["model"])
    soft = lambda audit: audit["jsd"]["weighted_mean"]  # noqa: E731
    argmax = lambda audit: audit["jsd"]["argmax_weighted_mean"]  # noqa: E731
    assert [c["accuracy"] for c in plain["conditions"]] == [c["accuracy"] for c in after["conditions"]]
    assert argmax(plain) == pytest.approx(argmax(after), abs=1e-12)
    assert soft(plain) != pytest.approx(soft(after), abs=1e-6), "the exported linear's softmax should differ"
    method = make_method("mmdb", scale=4.0)
    method.prepare(exported, ADAPTER, device=CPU)
    with method.as_trained(exported, ADAPTER):
        cosine = audit_model(exported, ADAPTER, config=scan_config, checkpoint=paths["model"])
    assert soft(cosine) == pytest.approx(soft(after), abs=1e-12)


def test_training_batches_padded_to_different_widths_merge_on_each_tokenizers_side_and_pad():
    """A Hugging Face collator pads each batch to its own longest text; the loop's shuffle buffer merges batches.
    Each token modality is widened with its own pad id on its own side; the other's ids and float features of a
    width that happens to equal L are left alone."""
    from biasaudit import Modality
    from biasaudit.training.epoch_batches import concat

    question = Modality("question", "tokens", key="q", mask_key="q_mask", pad_id=1, special_ids=(0, 2), padding_side="left")
    answer = Modality("answer", "tokens", key="a", mask_key="a_mask", pad_id=0, special_ids=(101, 102), padding_side="right")
    first = {"q": torch.tensor([[0, 5, 2]]), "q_mask": torch.tensor([[1, 1, 1]]),
             "a": torch.tensor([[101, 7, 102]]), "a_mask": torch.tensor([[1, 1, 1]]), "feat": torch.ones(1, 3)}
    second = {"q": torch.tensor([[0, 5, 6, 8, 2]]), "q_mask": torch.ones(1, 5, dtype=torch.long),
              "a": torch.tensor([[101, 7, 102]]), "a_mask": torch.tensor([[1, 1, 1]]), "feat": torch.ones(1, 3)}
    merged = concat([first, second], [question, answer])
    assert merged["q"].tolist() == [[1, 1, 0, 5, 2], [0, 5, 6, 8, 2]]  # left, with the question's pad id 1
    assert merged["q_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert merged["a"].tolist() == [[101, 7, 102], [101, 7, 102]]  # the answer's ids untouched
    assert merged["feat"].shape == (2, 3)


@pytest.mark.parametrize("tamper", ["flipped byte", "edited weights"])
def test_a_tampered_training_state_is_refused_on_resume(tamper, baseline, tmp_path, interrupter):
    """Resuming from a state whose bytes changed after it was written would continue another run than the one
    interrupted, and say nothing: it is refused with one sentence naming the file."""
    import io

    from biasaudit.errors import CheckpointError

    config = TrainConfig(epochs=2, seed=3)
    steps_per_epoch = -(-len(ADAPTER.split_data("train")) // config.batch_size)
    with pytest.raises(interrupter.Interrupt):  # after epoch one: the state holds it
        train(copy.deepcopy(baseline), ADAPTER, make_method("ce"), config=config, state_dir=tmp_path, progress=interrupter.at(steps_per_epoch + 2))
    path = tmp_path / "last.pt"
    if tamper == "flipped byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        sealed = torch.load(path, weights_only=True)
        state = torch.load(io.BytesIO(sealed["body"]), weights_only=True)
        first = next(iter(state["model"]))
        state["model"][first] = state["model"][first] + 1.0
        body = io.BytesIO()
        torch.save(state, body)
        sealed["body"] = body.getvalue()
        buffer = io.BytesIO()
        torch.save(sealed, buffer)
        path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match=r"last\.pt (was altered or damaged|cannot be read)"):
        train(copy.deepcopy(baseline), ADAPTER, make_method("ce"), config=config, state_dir=tmp_path, resume=True)
