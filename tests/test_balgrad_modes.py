"""BalGrad's switches (methods.md 7.1 head modes, 7.4 running-average weights) and their CLI options.

If these broke, a user would train with unimodal heads other than the ones the settings record, ship
a model.pt carrying training-only heads, resume a run into different weights than an uninterrupted
one, or start a long audit before learning that an option was misspelt.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from biasaudit.datasets.demo_model import DemoModel, DigitsCaptionsAdapter, train_baseline
from biasaudit.errors import AdapterError, CheckpointError, InputError
from biasaudit.methods._balgrad_math import RunningLosses, kl_weights
from biasaudit.training.loop import train
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.method_balgrad import BalGrad

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from method_models import TinyAdapter  # noqa: E402

sys.path.pop(0)

CPU = torch.device("cpu")
DEMO = DigitsCaptionsAdapter()
SCRIPT = Path(sys.executable).parent / "biasaudit"
DEMO_SPEC = f"{Path(__file__).parents[1] / 'examples' / 'digits_captions_adapter.py'}:adapter"


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    adapter = TinyAdapter()
    return adapter.build_model(), adapter, next(iter(adapter.data("train", batch_size=6)))


def one_step(method: BalGrad, model, adapter, batch) -> dict:
    """prepare + the gradients of one step, on unchanged weights (the loop's optimiser would apply them)."""
    method.prepare(model, adapter, device=CPU)
    return method.gradients(model, adapter, batch, step=0, total_steps=1, device=CPU)


# ---- ogm_split ------------------------------------------------------------------------------------

def test_ogm_split_unimodal_logits_are_the_weight_slices_plus_half_the_bias():
    model, adapter, batch = tiny()
    method = BalGrad(head_mode="ogm_split")
    method.prepare(model, adapter, device=CPU)
    with torch.no_grad():
        fused, single = method.logits(model, adapter, adapter.prepare(batch, device=CPU))
        W, b = model.classifier.weight, model.classifier.bias
        z_image, z_text = model.image_branch(batch["image"]), model.text_branch(batch["text"])
        assert torch.allclose(single["image"], z_image @ W[:, :2].T + b / 2, atol=1e-6)
        assert torch.allclose(single["text"], z_text @ W[:, 2:].T + b / 2, atol=1e-6)
        assert torch.allclose(fused, model(batch["image"], batch["text"]))


def test_ogm_split_trains_only_the_branches_with_the_unimodal_losses():
    model, adapter, batch = tiny(1)
    task_grads = torch.autograd.grad(F.cross_entropy(model(batch["image"], batch["text"]), batch["label"]),
                                     list(model.classifier.parameters()))
    one_step(BalGrad(head_mode="ogm_split"), model, adapter, batch)
    for param, expected in zip(model.classifier.parameters(), task_grads):
        assert torch.allclose(param.grad, expected, atol=1e-7)


def test_ogm_split_without_a_classifier_hook_names_the_hook():
    class NoClassifier(TinyAdapter):
        classifier = None

    model, _, _ = tiny()
    with pytest.raises(AdapterError, match=r"classifier\(model\) hook"):
        BalGrad(head_mode="ogm_split").prepare(model, NoClassifier(), device=CPU)


# ---- separate heads ------------------------------------------------------------------------------

def test_separate_heads_learn_their_modality_label_from_the_branch_output():
    model, adapter, batch = tiny(2)
    method = BalGrad(head_mode="separate")
    record = one_step(method, model, adapter, batch)
    w_image, b_image, w_text, b_text = method.extra_parameters()
    assert w_image.shape == (3, 2) and w_text.shape == (3, 2)
    z_image = model.image_branch(batch["image"]).detach()
    loss_image = F.cross_entropy(F.linear(z_image, w_image, b_image), batch["label"])
    assert record["loss_v"] == pytest.approx(float(loss_image.detach()), rel=1e-6)
    expected = torch.autograd.grad(loss_image, [w_image, b_image])
    assert torch.allclose(w_image.grad, expected[0], atol=1e-7) and torch.allclose(b_image.grad, expected[1], atol=1e-7)
    assert model.classifier.weight.grad is not None and w_text.grad is not None


def test_separate_heads_are_seeded_by_the_run_seed_and_leave_the_global_stream_alone():
    def heads(seed):
        model, adapter, _ = tiny()
        method = BalGrad(head_mode="separate")
        torch.manual_seed(seed)
        before = torch.get_rng_state()
        method.prepare(model, adapter, device=CPU)
        assert torch.equal(torch.get_rng_state(), before)
        return [p.detach().clone() for p in method.extra_parameters()]

    assert all(torch.equal(a, b) for a, b in zip(heads(4), heads(4)))
    assert not all(torch.equal(a, b) for a, b in zip(heads(4), heads(5)))


@pytest.fixture(scope="module")
def baseline():
    return train_baseline(DEMO, seed=0, epochs=3)


def test_separate_heads_train_but_stay_out_of_the_exported_model(baseline):
    model = copy.deepcopy(baseline)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    method = BalGrad(head_mode="separate")
    config = TrainConfig(epochs=1, seed=0)
    torch.manual_seed(config.seed)
    method.prepare(copy.deepcopy(model), DEMO, device=CPU)
    initial = [p.detach().clone() for p in method.extra_parameters()]
    train(model, DEMO, method, config=config)
    trained = method.extra_parameters()
    assert [tuple(p.shape) for p in trained] == [(10, 32), (10,), (10, 32), (10,)]  # 32-unit branches, 10 digits
    assert all(not torch.equal(a, b) for a, b in zip(initial, trained)), "every head parameter must move"
    method.export(model, DEMO)
    assert {k: v.shape for k, v in model.state_dict().items()} == expected
    DemoModel().load_state_dict(model.state_dict(), strict=True)


# ---- running weights -----------------------------------------------------------------------------

def test_running_losses_follow_the_moving_average_by_hand():
    running = RunningLosses(momentum=0.9)
    assert running.update(1.0, 3.0) == (1.0, 3.0)  # the first batch sets the averages
    assert running.update(2.0, 1.0) == pytest.approx((1.1, 2.8))  # 0.9*1 + 0.1*2, 0.9*3 + 0.1*1
    assert running.update(0.0, 0.0) == pytest.approx((0.99, 2.52))
    assert kl_weights(*running.values) == pytest.approx((0.99 / 3.51, 2.52 / 3.51))


def test_running_weights_in_the_log_are_those_of_the_averaged_losses(baseline):
    log = train(copy.deepcopy(baseline), DEMO, BalGrad(weights="running"), config=TrainConfig(epochs=1, seed=0))
    running = RunningLosses(momentum=0.9)
    differs_from_batch = False
    for entry in log:
        expected = kl_weights(*running.update(entry["loss_v"], entry["loss_l"]))
        assert (entry["weight_v"], entry["weight_l"]) == pytest.approx(expected, rel=1e-12), entry["step"]
        differs_from_batch |= abs(entry["weight_v"] - kl_weights(entry["loss_v"], entry["loss_l"])[0]) > 1e-3
    assert differs_from_batch


# ---- resume --------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{"head_mode": "separate"}, {"weights": "running"}], ids=["separate", "running"])
def test_resume_after_epoch_one_gives_the_uninterrupted_weights(options, baseline, tmp_path, interrupter):
    config = TrainConfig(epochs=2, seed=3, batch_size=128)
    straight, straight_method = copy.deepcopy(baseline), BalGrad(**options)
    train(straight, DEMO, straight_method, config=config, state_dir=tmp_path / "a")

    steps_per_epoch = -(-len(DEMO.split_data("train")) // config.batch_size)

    with pytest.raises(interrupter.Interrupt):
        train(copy.deepcopy(baseline), DEMO, BalGrad(**options), config=config, state_dir=tmp_path / "b",
              progress=interrupter.at(steps_per_epoch + 2))
    resumed, resumed_method = copy.deepcopy(baseline), BalGrad(**options)  # a fresh process
    train(resumed, DEMO, resumed_method, config=config, state_dir=tmp_path / "b", resume=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    for a, b in zip(straight_method.extra_parameters(), resumed_method.extra_parameters()):
        assert torch.equal(a, b)
    assert straight_method.extra_state()["running"] == resumed_method.extra_state()["running"]


def test_resume_with_another_head_mode_is_refused(baseline, tmp_path):
    train(copy.deepcopy(baseline), DEMO, BalGrad(head_mode="separate"), config=TrainConfig(epochs=1, batch_size=256),
          state_dir=tmp_path)
    with pytest.raises(CheckpointError, match="head_mode 'separate' -> 'shared_zero'"):
        train(copy.deepcopy(baseline), DEMO, BalGrad(), config=TrainConfig(epochs=2, batch_size=256), state_dir=tmp_path, resume=True)


# ---- options and settings ------------------------------------------------------------------------

@pytest.mark.parametrize("options, needle", [
    ({"head_mode": "magic"}, "shared_zero, ogm_split, separate"),
    ({"weights": "ema"}, "batch, running"),
    ({"schedule": "cosine"}, "linear, constant"),
    ({"kl_mode": "js"}, "mutual, undirected"),
    ({"projection": "local"}, "global, per_modality"),
    ({"lambda_initial": 1.5}, "between 0 and 1"),
    ({"beta": -1.0}, ">= 0"),
])
def test_bad_options_are_refused_when_the_method_is_made(options, needle):
    with pytest.raises(InputError, match=needle):
        BalGrad(**options)


def test_settings_record_every_value_used():
    model, adapter, _ = tiny()
    method = BalGrad(lambda_initial=0.3, schedule="constant", beta=0.5, kl_mode="undirected", projection="per_modality",
                     head_mode="separate", weights="running")
    method.prepare(model, adapter, device=CPU)
    assert method.settings() == {"lambda_initial": 0.3, "schedule": "constant", "beta": 0.5, "kl_mode": "undirected",
                                 "projection": "per_modality", "head_mode": "separate", "weights": "running",
                                 "weights_momentum": 0.9, "head_inputs": {"image": 2, "text": 2},
                                 "modalities": ["image", "text"]}


@pytest.mark.parametrize("flag, value, available", [("--head-mode", "magic", "'shared_zero', 'ogm_split', 'separate'"),
                                                    ("--balgrad-weights", "ema", "'batch', 'running'")])
def test_unknown_balgrad_option_exits_2_before_any_audit(flag, value, available, tmp_path):
    checkpoint = tmp_path / "model.pt"
    torch.save(DemoModel().state_dict(), checkpoint)
    result = subprocess.run([str(SCRIPT), "fix", str(checkpoint), "--adapter", DEMO_SPEC, "--method", "balgrad",
                             flag, value, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    said = " ".join(result.stderr.replace("│", " ").split())  # click's usage box wraps the sentence
    assert f"'{value}' is not one of {available}" in said and flag in said
    assert not (tmp_path / "out").exists()
