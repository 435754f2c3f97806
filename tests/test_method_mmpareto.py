"""MMPareto as a backward for any loop (issue 21, item 1; methods.md section 8): the weights in the conflicting and
non-conflicting cases by hand, the rescale, the head's plain sum, accumulation, the two autograd passes, gradient
scaling, DDP and the argument checks."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.errors import ArgumentTypeError, InputError
from biasaudit.methods.mmpareto import MMPareto

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import method_ddp  # noqa: E402
import method_models  # noqa: E402

sys.path.pop(0)


class Vector(nn.Module):
    def __init__(self, size: int = 2) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(size))


def linear_model(g_f: dict[str, list[float]], g_u: dict[str, list[float]], *, head_f=(1.0, 2.0), head_u=(0.5, -1.0)):
    """Branches and a head whose losses are linear in the parameters, so that every gradient is the given constant:
    ∇_θm L_fused = g_f[m], ∇_θm L_m = g_u[m]; ∇_head L_fused = head_f, ∇_head L_m = head_u for each m."""
    modules = {name: Vector() for name in g_f}
    head = Vector()

    def losses():
        fused = sum(torch.dot(torch.tensor(g_f[m]), modules[m].theta) for m in modules) + torch.dot(torch.tensor(head_f), head.theta)
        unimodal = {m: torch.dot(torch.tensor(g_u[m]), modules[m].theta) + torch.dot(torch.tensor(head_u), head.theta) for m in modules}
        return fused, unimodal

    return modules, head, losses


def test_agreeing_gradients_take_half_and_half_that_is_their_sum_times_gamma():
    modules, head, losses = linear_model({"image": [1.0, 0.0], "text": [0.0, 2.0]}, {"image": [1.0, 1.0], "text": [1.0, 1.0]})
    step = MMPareto(modules, gamma=1.5).backward(*losses())
    assert step.conflicts == {"image": False, "text": False}
    assert step.cosines == pytest.approx({"image": 1 / math.sqrt(2), "text": 1 / math.sqrt(2)})
    assert step.weights == {"image": 0.5, "text": 0.5} and step.scales == {"image": 1.0, "text": 1.0}
    torch.testing.assert_close(modules["image"].theta.grad, 1.5 * torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(modules["text"].theta.grad, 1.5 * torch.tensor([1.0, 3.0]))


def test_conflicting_gradients_take_the_min_norm_weights_rescaled_to_the_norm_of_their_sum():
    # image: g_f = (1, 0), g_u = (−1, 1): ⟨g_f, g_u⟩ = −1, cos = −1/√2, w = (‖g_u‖² − ⟨g_f, g_u⟩) / ‖g_f − g_u‖² = 3/5;
    # g' = 2(0.6 g_f + 0.4 g_u) = (0.4, 0.8), ‖g'‖ = √0.8 < ‖g_f + g_u‖ = 1, so g' becomes (0.4, 0.8)/√0.8, times 1.5.
    modules, head, losses = linear_model({"image": [1.0, 0.0], "text": [1.0, 0.0]}, {"image": [-1.0, 1.0], "text": [3.0, 0.0]})
    step = MMPareto(modules, gamma=1.5).backward(*losses())
    assert step.conflicts == {"image": True, "text": False}
    assert step.cosines["image"] == pytest.approx(-1 / math.sqrt(2))
    assert step.weights["image"] == pytest.approx(0.6)
    assert step.scales["image"] == pytest.approx(1 / math.sqrt(0.8))
    expected = 1.5 * torch.tensor([0.4, 0.8]) / math.sqrt(0.8)
    torch.testing.assert_close(modules["image"].theta.grad, expected)
    assert float(modules["image"].theta.grad.norm()) == pytest.approx(1.5 * 1.0)  # γ·‖g_f + g_u‖
    # The min-norm point is orthogonal to g_f − g_u (the two-task optimality condition).
    assert float(torch.dot(modules["image"].theta.grad, torch.tensor([2.0, -1.0]))) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(modules["text"].theta.grad, 1.5 * torch.tensor([4.0, 0.0]))


def test_a_zero_unimodal_gradient_has_no_cosine_and_takes_the_plain_sum():
    modules, head, losses = linear_model({"image": [1.0, 0.0], "text": [1.0, 0.0]}, {"image": [0.0, 0.0], "text": [1.0, 0.0]})
    step = MMPareto(modules, gamma=2.0).backward(*losses())
    assert math.isnan(step.cosines["image"]) and not step.conflicts["image"]
    torch.testing.assert_close(modules["image"].theta.grad, torch.tensor([2.0, 0.0]))


def test_head_takes_the_plain_gradient_of_the_fused_plus_unimodal_losses_without_gamma():
    modules, head, losses = linear_model({"image": [1.0, 0.0], "text": [1.0, 0.0]}, {"image": [-1.0, 1.0], "text": [3.0, 0.0]})
    MMPareto(modules, gamma=1.5).backward(*losses())
    torch.testing.assert_close(head.theta.grad, torch.tensor([1.0, 2.0]) + 2 * torch.tensor([0.5, -1.0]))


def test_backward_adds_to_existing_gradients_like_loss_backward():
    modules, head, losses = linear_model({"image": [1.0, 0.0], "text": [0.0, 2.0]}, {"image": [1.0, 1.0], "text": [1.0, 1.0]})
    mmp = MMPareto(modules, gamma=1.5)
    mmp.backward(*losses())
    once = {name: m.theta.grad.clone() for name, m in modules.items()} | {"head": head.theta.grad.clone()}
    mmp.backward(*losses())  # a second micro-batch
    for name, module in modules.items():
        torch.testing.assert_close(module.theta.grad, 2 * once[name])
    torch.testing.assert_close(head.theta.grad, 2 * once["head"])


def two_branch(separate: bool = False) -> method_models.TwoBranch:
    """Late fusion; the unimodal logits are the fused classifier's slices (the `ogm_split` head mode) or come from
    heads of their own (`separate`, whose gradients on the branches conflict with the fused loss's here)."""
    return method_models.TwoBranch(unimodal="separate" if separate else "ogm_split", tanh=True)


def batch(seed: int = 0, separate: bool = False):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return two_branch(separate), torch.randn(8, 4), torch.randn(8, 2) * 3, torch.randint(0, 3, (8,))


def losses_of(model, a, b, y):
    logits, unimodal = model(a, b)
    return F.cross_entropy(logits, y), {m: F.cross_entropy(o, y) for m, o in unimodal.items()}


def reference(model, fused, unimodal, gamma):
    """The formula on flat vectors, with one autograd pass per loss (the reference code's way)."""
    expected = {}
    for name, module in (("image", model.vision), ("text", model.text)):
        params = list(module.parameters())
        f = torch.cat([g.reshape(-1) for g in torch.autograd.grad(fused, params, retain_graph=True)]).double()
        u = torch.cat([g.reshape(-1) for g in torch.autograd.grad(unimodal[name], params, retain_graph=True)]).double()
        if torch.dot(f, u) > 0:
            new = f + u
        else:
            w = torch.clamp(torch.dot(u - f, u) / torch.dot(f - u, f - u), 0, 1)
            new = 2 * (w * f + (1 - w) * u)
            if new.norm() < (f + u).norm():
                new = new * (f + u).norm() / new.norm()
        expected[name] = (gamma * new).float()
    total = fused + sum(unimodal.values())
    expected["head"] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(total, list(model.head.parameters()), retain_graph=True)])
    return expected


def flat(module):
    return torch.cat([p.grad.reshape(-1) for p in module.parameters()])


@pytest.mark.parametrize("separate", [False, True], ids=["ogm_split_heads", "separate_heads"])
def test_a_real_model_matches_the_per_loss_reference_in_two_autograd_passes(monkeypatch, separate):
    model, a, b, y = batch(separate=separate)
    fused, unimodal = losses_of(model, a, b, y)
    expected = reference(model, fused, unimodal, 1.5)
    if separate:  # a unimodal head is "other": it takes its own loss's plain gradient
        own = list(model.unimodal_heads["image"].parameters())
        expected["image_head"] = torch.cat([g.reshape(-1) for g in torch.autograd.grad(unimodal["image"], own, retain_graph=True)])
    calls = []
    original = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    step = MMPareto({"image": model.vision, "text": model.text}).backward(fused, unimodal)
    assert len(calls) == 2
    torch.testing.assert_close(flat(model.vision), expected["image"])
    torch.testing.assert_close(flat(model.text), expected["text"])
    torch.testing.assert_close(flat(model.head), expected["head"])
    assert step.conflicts["image"] is separate  # the separate heads' image gradient opposes the fused one's
    if separate:
        torch.testing.assert_close(flat(model.unimodal_heads["image"]), expected["image_head"])


def test_a_unimodal_loss_that_reaches_another_branch_still_uses_only_its_own_branch_gradient():
    modules, head, _ = linear_model({"image": [1.0, 0.0], "text": [0.0, 1.0]}, {"image": [1.0, 1.0], "text": [1.0, 1.0]})
    fused = torch.dot(torch.tensor([1.0, 0.0]), modules["image"].theta) + torch.dot(torch.tensor([0.0, 1.0]), modules["text"].theta)
    leak = torch.dot(torch.tensor([5.0, 5.0]), modules["text"].theta)  # L_image also depends on θ_text
    unimodal = {"image": modules["image"].theta.sum() + leak + head.theta.sum(),
                "text": modules["text"].theta.sum() + head.theta.sum()}
    MMPareto(modules, gamma=1.0).backward(fused, unimodal)
    torch.testing.assert_close(modules["image"].theta.grad, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(modules["text"].theta.grad, torch.tensor([1.0, 2.0]))  # the leak's (5, 5) is not used
    torch.testing.assert_close(head.theta.grad, torch.tensor([2.0, 2.0]))


def test_scaled_losses_give_scaled_gradients_so_a_grad_scaler_can_unscale_them():
    model, a, b, y = batch()
    fused, unimodal = losses_of(model, a, b, y)
    MMPareto({"image": model.vision, "text": model.text}).backward(fused, unimodal)
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fused, unimodal = losses_of(model, a, b, y)
    scale = 1024.0
    MMPareto({"image": model.vision, "text": model.text}).backward(fused * scale, {m: l * scale for m, l in unimodal.items()})
    for parameter, expected in zip(model.parameters(), plain):
        torch.testing.assert_close(parameter.grad / scale, expected)


# ---- what a user sees when a call is wrong: one sentence, and no gradient changed ------------------------------------
def test_a_branch_outside_the_fused_forward_is_named_before_any_gradient_is_written():
    model, a, b, y = batch()
    za = model.vision(a)
    fused = F.cross_entropy(za, y)  # the text branch takes no part
    unimodal = {"image": F.cross_entropy(za, y), "text": F.cross_entropy(model.text(b), y)}
    with pytest.raises(InputError, match=r"'fused_loss'.*does not depend on branch 'text'"):
        MMPareto({"image": model.vision, "text": model.text}).backward(fused, unimodal)
    assert all(p.grad is None for p in model.parameters())


def test_a_unimodal_loss_from_the_wrong_branch_is_named():
    model, a, b, y = batch()
    fused, unimodal = losses_of(model, a, b, y)
    with pytest.raises(InputError, match=r"'unimodal_losses'.*'text' loss that does not depend on branch 'text'"):
        MMPareto({"image": model.vision, "text": model.text}).backward(fused, {"image": unimodal["image"], "text": unimodal["image"] * 2})
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("make, error, words", [
    (lambda f, u: (f, {"image": u["image"]}), InputError, r"'unimodal_losses'.*keyed 'image', 'text'"),
    (lambda f, u: (f.detach(), u), InputError, r"'fused_loss'.*scalar loss tensor"),
    (lambda f, u: (f.expand(3), u), InputError, r"'fused_loss'.*scalar loss tensor"),
    (lambda f, u: (f, {"image": u["image"], "text": u["text"].expand(2)}), InputError, r"'unimodal_losses'.*'text' entry"),
    (lambda f, u: (1.0, u), ArgumentTypeError, r"'fused_loss'.*torch.Tensor"),
])
def test_wrong_losses_are_refused_in_one_sentence(make, error, words):
    model, a, b, y = batch()
    with pytest.raises(error, match=words):
        MMPareto({"image": model.vision, "text": model.text}).backward(*make(*losses_of(model, a, b, y)))
    assert all(p.grad is None for p in model.parameters())


def test_bad_construction_arguments_name_the_parameter():
    model = two_branch()
    with pytest.raises(InputError, match="'gamma'"):
        MMPareto({"image": model.vision, "text": model.text}, gamma=-1.0)
    with pytest.raises(InputError, match="'branches'.*share one"):
        MMPareto({"image": model.vision, "both": nn.Sequential(model.vision, model.text)})
    with pytest.raises(InputError, match="'branches'.*at least two"):
        MMPareto({"image": model.vision})
    mmp = MMPareto({"image": model.vision, "text": model.text})
    assert mmp.state_dict() == {}
    with pytest.raises(InputError, match="'state'"):
        mmp.load_state_dict({"q": 1})


# ---- DDP: two gloo processes on halves of the batch equal one process on the whole ------------------------------------
def test_two_ddp_processes_on_half_batches_equal_one_process_on_the_whole_batch(tmp_path, gloo_ranks):
    ranks, (single, steps) = method_ddp.on_two_ranks_and_one(gloo_ranks, tmp_path, "mmpareto")
    # The image branch conflicts in the first two steps and not in the third: both rules are exercised.
    assert [s.conflicts["image"] for s in steps] == [True, True, False]
    for saved in ranks:
        for cosines, step in zip(saved["cosines"], steps):
            assert cosines == pytest.approx(step.cosines, rel=1e-5, abs=1e-6)
        for name, grad in single.items():
            torch.testing.assert_close(saved["grads"][name], grad, atol=1e-5, rtol=1e-5)
