"""OGM-GE as a component of any loop (issue 21, item 1; methods.md section 8): k_m and the rescaled gradients by
hand, the GE noise's seed and resume, the global RNG left alone, the epoch window, DDP and the argument checks."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.errors import ArgumentTypeError, InputError
from biasaudit.methods.ogm_ge import OGMGE, coefficient

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import method_ddp  # noqa: E402
from method_models import TwoBranch  # noqa: E402

sys.path.pop(0)

LN3 = math.log(3.0)


def branches(count: int = 2) -> dict[str, nn.Linear]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return {name: nn.Linear(2, 2) for name in ["image", "text", "audio"][:count]}


def set_grads(modules: dict[str, nn.Linear]) -> dict[str, list[torch.Tensor]]:
    """Known gradients on every parameter; returns copies to compare with."""
    known = {}
    for index, (name, module) in enumerate(modules.items()):
        module.weight.grad = torch.tensor([[1.0, -2.0], [3.0, 0.5]]) * (index + 1)
        module.bias.grad = torch.tensor([0.25, -1.0]) * (index + 1)
        known[name] = [module.weight.grad.clone(), module.bias.grad.clone()]
    return known


# Labels [0, 0]; logits [ln 3, 0] give p(y) = 0.75, [0, 0] give 0.5 and [0, ln 3] give 0.25 for each sample.
LABELS = torch.tensor([0, 0])
P75, P50, P25 = torch.tensor([[LN3, 0.0]] * 2), torch.zeros(2, 2), torch.tensor([[0.0, LN3]] * 2)


def test_dominant_branch_gradient_shrinks_by_one_minus_tanh_alpha_rho_and_weak_branch_keeps_it():
    modules = branches()
    known = set_grads(modules)
    ogm = OGMGE(modules, alpha=0.3, ge=False)
    step = ogm.after_backward({"image": P75, "text": P50}, LABELS)
    # s_image = 1.5, s_text = 1.0: ρ_image = 1.5 > 1, ρ_text = 2/3 < 1.
    assert step.scores == pytest.approx({"image": 1.5, "text": 1.0})
    assert step.ratios == pytest.approx({"image": 1.5, "text": 2 / 3})
    k = 1 - math.tanh(0.3 * 1.5)
    assert step.coefficients == pytest.approx({"image": k, "text": 1.0})
    assert ogm.last is step and step.modulated and not step.noise
    torch.testing.assert_close(modules["image"].weight.grad, known["image"][0] * k)
    torch.testing.assert_close(modules["image"].bias.grad, known["image"][1] * k)  # every parameter, not only weights
    torch.testing.assert_close(modules["text"].weight.grad, known["text"][0])
    torch.testing.assert_close(modules["text"].bias.grad, known["text"][1])


def test_coefficient_jumps_at_ratio_one_as_in_the_reference_code():
    assert coefficient(1.0, 0.3) == 1.0
    assert coefficient(1.0 + 1e-12, 0.3) == pytest.approx(1 - math.tanh(0.3))
    assert coefficient(0.2, 0.3) == 1.0
    assert coefficient(50.0, 0.8) == pytest.approx(1 - math.tanh(40.0), abs=1e-15) and coefficient(50.0, 0.8) >= 0
    modules = branches()
    known = set_grads(modules)
    step = OGMGE(modules, ge=False).after_backward({"image": P50, "text": P50}, LABELS)  # ρ = 1 exactly: no change
    assert step.coefficients == {"image": 1.0, "text": 1.0}
    torch.testing.assert_close(modules["image"].weight.grad, known["image"][0])


def test_three_branches_compare_each_with_the_mean_of_the_others():
    modules = branches(3)
    known = set_grads(modules)
    step = OGMGE(modules, alpha=0.3, ge=False).after_backward({"image": P75, "text": P25, "audio": P50}, LABELS)
    # s = 1.5, 0.5, 1.0: ρ_image = 1.5 / 0.75 = 2, ρ_text = 0.5 / 1.25 = 0.4, ρ_audio = 1.0 / 1.0 = 1.
    assert step.ratios == pytest.approx({"image": 2.0, "text": 0.4, "audio": 1.0})
    assert step.coefficients == pytest.approx({"image": 1 - math.tanh(0.6), "text": 1.0, "audio": 1.0})
    torch.testing.assert_close(modules["image"].weight.grad, known["image"][0] * (1 - math.tanh(0.6)))


def test_ge_noise_is_the_seeded_draw_times_the_gradient_std_on_top_of_the_modulated_gradient():
    modules = branches()
    known = set_grads(modules)
    OGMGE(modules, alpha=0.3, seed=7).after_backward({"image": P75, "text": P50}, LABELS)
    generator = torch.Generator().manual_seed(7)
    k = {"image": 1 - math.tanh(0.45), "text": 1.0}
    for name, module in modules.items():
        for parameter, grad in zip((module.weight, module.bias), known[name]):
            expected = k[name] * grad + torch.randn(grad.shape, generator=generator) * grad.std(correction=0)
            torch.testing.assert_close(parameter.grad, expected)


def test_ge_noise_resumes_from_state_dict_and_never_touches_the_global_rng():
    modules = branches()
    before = torch.get_rng_state()
    first = OGMGE(modules, seed=3)
    set_grads(modules)
    first.after_backward({"image": P75, "text": P50}, LABELS)
    saved = first.state_dict()
    set_grads(modules)
    first.after_backward({"image": P75, "text": P50}, LABELS)
    continued = [p.grad.clone() for m in modules.values() for p in m.parameters()]
    assert torch.equal(torch.get_rng_state(), before)

    resumed = OGMGE(modules, seed=3)
    resumed.load_state_dict(saved)
    set_grads(modules)
    resumed.after_backward({"image": P75, "text": P50}, LABELS)
    for parameter, expected in zip((p for m in modules.values() for p in m.parameters()), continued):
        assert torch.equal(parameter.grad, expected)

    fresh = OGMGE(modules, seed=3)  # without the saved state the second step would repeat the first step's draws
    set_grads(modules)
    fresh.after_backward({"image": P75, "text": P50}, LABELS)
    assert not torch.equal(modules["text"].weight.grad, continued[2])


def test_outside_the_modulation_window_gradients_are_left_alone():
    modules = branches()
    known = set_grads(modules)
    ogm = OGMGE(modules, modulation_epochs=(1, 3))
    step = ogm.after_backward({"image": P75, "text": P50}, LABELS)
    assert not step.modulated and step.coefficients == {"image": 1.0, "text": 1.0}
    assert step.ratios["image"] == pytest.approx(1.5)  # still reported
    torch.testing.assert_close(modules["image"].weight.grad, known["image"][0])
    ogm.set_epoch(2)
    assert ogm.after_backward({"image": P75, "text": P50}, LABELS).modulated
    ogm.set_epoch(3)
    assert not ogm.modulating()
    assert ogm.state_dict()["epoch"] == 3


def test_in_a_plain_loop_only_branch_gradients_change():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model, a, b, y = TwoBranch(unimodal="ogm_split"), torch.randn(6, 4), torch.randn(6, 2), torch.randint(0, 3, (6,))
    logits, unimodal = model(a, b)
    F.cross_entropy(logits, y).backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters()}
    step = OGMGE({"image": model.vision, "text": model.text}, ge=False).after_backward(unimodal, y)
    for name, parameter in model.named_parameters():
        k = step.coefficients["image"] if name.startswith("vision") else step.coefficients["text"] if name.startswith("text") else 1.0
        torch.testing.assert_close(parameter.grad, plain[name] * k)


# ---- what a user sees when a call is wrong: one sentence, and no gradient changed ------------------------------------
def test_a_branch_outside_the_forward_is_named_before_any_gradient_changes():
    modules = branches()
    known = set_grads(modules)
    modules["text"].weight.grad = modules["text"].bias.grad = None
    with pytest.raises(InputError, match=r"branch 'text' whose parameters have no gradient"):
        OGMGE(modules, ge=False).after_backward({"image": P75, "text": P50}, LABELS)
    torch.testing.assert_close(modules["image"].weight.grad, known["image"][0])


@pytest.mark.parametrize("logits, labels, words", [
    ({"image": P75}, LABELS, r"'unimodal_logits'.*keyed 'image', 'text'"),
    ({"image": P75, "vision": P50}, LABELS, r"'unimodal_logits'.*keyed 'image', 'text'"),
    ({"image": P75, "text": torch.zeros(3, 2)}, LABELS, r"'unimodal_logits'.*'text' logits of shape \(3, 2\)"),
    ({"image": P75, "text": torch.zeros(2)}, LABELS, r"'unimodal_logits'.*'text' logits of shape \(2,\)"),
    ({"image": P75, "text": P50}, torch.tensor([0, 2]), r"'unimodal_logits'.*class indices run from 0 to 2"),
    ({"image": P75, "text": P50}, torch.tensor([0.0, 1.0]), r"'labels'.*integer class indices"),
])
def test_wrong_logits_or_labels_are_refused_in_one_sentence_before_any_update(logits, labels, words):
    modules = branches()
    known = set_grads(modules)
    with pytest.raises(InputError, match=words):
        OGMGE(modules, ge=False).after_backward(logits, labels)
    torch.testing.assert_close(modules["image"].weight.grad, known["image"][0])


def test_bad_construction_arguments_name_the_parameter():
    modules = branches()
    with pytest.raises(InputError, match="'branches'.*at least two branches"):
        OGMGE({"image": modules["image"]})
    with pytest.raises(InputError, match="'branches'.*share one"):
        OGMGE({"image": modules["image"], "text": modules["image"]})
    with pytest.raises(ArgumentTypeError, match="'branches'"):
        OGMGE([modules["image"], modules["text"]])
    with pytest.raises(InputError, match="'alpha'"):
        OGMGE(modules, alpha=0.0)
    with pytest.raises(InputError, match="'modulation_epochs'"):
        OGMGE(modules, modulation_epochs=(3, 3))
    with pytest.raises(ArgumentTypeError, match="'ge'"):
        OGMGE(modules, ge="yes")
    with pytest.raises(ArgumentTypeError, match="has no parameter 'beta'"):
        OGMGE(modules, beta=1.0)
    frozen = branches()
    frozen["text"].requires_grad_(False)
    with pytest.raises(InputError, match="'text' has none"):
        OGMGE(frozen)
    with pytest.raises(InputError, match="'state'"):
        OGMGE(modules).load_state_dict({"epoch": 1})


# ---- DDP: two gloo processes on halves of the batch equal one process on the whole ------------------------------------
def test_two_ddp_processes_on_half_batches_equal_one_process_on_the_whole_batch(tmp_path, gloo_ranks):
    ranks, (single, steps) = method_ddp.on_two_ranks_and_one(gloo_ranks, tmp_path, "ogm_ge")
    for saved in ranks:
        for ratios, step in zip(saved["ratios"], steps):  # the first step modulates 'text', the second 'image'
            assert ratios == pytest.approx(step.ratios, rel=1e-6)
        for name, grad in single.items():
            torch.testing.assert_close(saved["grads"][name], grad, atol=1e-5, rtol=1e-5)
