"""BalGrad's gradient step (methods.md section 7) on hand-checked vectors and a tiny late-fusion model, through the
production method (`BalGrad.logits`, `BalGrad.step`) for every head mode.

The model: image [B, 3] -> Linear(3, 2), text [B, 4] -> Linear(4, 2), concatenation, a shared
Linear(4, 3) classifier (θ_T). The hand computations below rebuild the unimodal logits from the weights:
shared_zero is the classifier on the zero-filled fusion with detached weights, ogm_split that minus half the
bias, separate the method's own heads on the branch outputs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.datasets.demo_model import DemoModel
from biasaudit.errors import AdapterError, InputError
from biasaudit.methods._balgrad_gradients import balgrad_step
from biasaudit.methods._balgrad_math import BalGradStep, LambdaSchedule, kl_weights, mutual_kl, project_conflict
from biasaudit.training.branch_heads import split_parameters
from biasaudit.training.method_balgrad import HEAD_MODES, BalGrad

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from method_models import TinyAdapter, TinyLateFusion, tiny_batch  # noqa: E402

sys.path.pop(0)

CPU = torch.device("cpu")


def hand_unimodal(model: TinyLateFusion, method: BalGrad, batch) -> dict[str, torch.Tensor]:
    """The unimodal logits of the method's head mode, rebuilt from the weights (module docstring)."""
    z = {"image": model.image_branch(batch["image"]), "text": model.text_branch(batch["text"])}
    if method.head_mode == "separate":
        heads = method.extra_parameters()
        return {"image": F.linear(z["image"], heads[0], heads[1]), "text": F.linear(z["text"], heads[2], heads[3])}
    W, b = model.classifier.weight.detach(), model.classifier.bias.detach()
    shift = b / 2 if method.head_mode == "ogm_split" else torch.zeros_like(b)
    zeros = {m: torch.zeros_like(v) for m, v in z.items()}
    return {"image": F.linear(torch.cat([z["image"], zeros["text"]], 1), W, b) - shift,
            "text": F.linear(torch.cat([zeros["image"], z["text"]], 1), W, b) - shift}


def tiny_setup(seed: int, *, kl_mode: str = "mutual", task_scale: float = 1.0, head_mode: str = "shared_zero"):
    """A model, its parameter split and the five losses of one batch of 6 samples, from the production method."""
    torch.manual_seed(seed)
    model, adapter, batch = TinyLateFusion(), TinyAdapter(), tiny_batch(seed)
    method = BalGrad(kl_mode=kl_mode, head_mode=head_mode)
    method.prepare(model, adapter, device=CPU)
    fused, single = method.logits(model, adapter, adapter.prepare(batch, device=CPU))
    task_loss = task_scale * F.cross_entropy(fused, batch["label"])
    unimodal = {m: F.cross_entropy(o, batch["label"]) for m, o in single.items()}
    task, branches = split_parameters(model, {"image": model.image_branch, "text": model.text_branch})
    return model, task, branches, task_loss, unimodal, mutual_kl(single, mode=kl_mode)


def value(loss: torch.Tensor) -> float:
    return loss.detach().item()


def flat_grad(loss: torch.Tensor, params) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def flat_dot_grad(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


# --- projection -------------------------------------------------------------------------------

def test_projection_of_a_hand_example_removes_exactly_the_conflicting_component():
    projected, cos_before, cos_after, conflicted = project_conflict(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]))
    assert torch.allclose(projected, torch.tensor([0.5, 0.5]))
    assert cos_before == pytest.approx(-1 / math.sqrt(2))
    assert cos_after == pytest.approx(0.0, abs=1e-7)
    assert conflicted is True


@pytest.mark.parametrize("seed", range(100))
def test_projected_task_gradient_no_longer_opposes_the_kl_gradient(seed):
    gen = torch.Generator().manual_seed(seed)
    size = int(torch.randint(2, 60, (1,), generator=gen))
    g_kl = torch.randn(size, generator=gen, dtype=torch.float64) * float(torch.rand(1, generator=gen) * 10 + 0.01)
    g_task = torch.randn(size, generator=gen, dtype=torch.float64)
    if torch.dot(g_task, g_kl) > 0:
        g_task = -g_task
    projected, cos_before, cos_after, conflicted = project_conflict(g_task, g_kl)
    assert conflicted and cos_before < 0
    assert float(torch.dot(projected, g_kl)) >= -1e-6
    assert cos_after == pytest.approx(0.0, abs=1e-9)
    # only the component along g_kl was removed (a zero vector would also be orthogonal)
    removed = g_task - projected
    along = torch.dot(removed, g_kl) / torch.dot(g_kl, g_kl) * g_kl
    assert torch.allclose(removed, along, atol=1e-9)
    # float32 gradients are orthogonal up to float32 rounding
    _, _, cos32, _ = project_conflict(g_task.float(), g_kl.float())
    assert cos32 >= -1e-6


def test_non_conflicting_task_gradient_is_returned_unchanged():
    g_task = torch.tensor([0.3, -1.7, 2.0])
    for g_kl in (torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.0, 2.0, 1.7]), torch.zeros(3)):
        projected, cos_before, cos_after, conflicted = project_conflict(g_task, g_kl)
        assert torch.equal(projected, g_task) and conflicted is False
        assert cos_before == cos_after or (math.isnan(cos_before) and math.isnan(cos_after))
    assert math.isnan(project_conflict(g_task, torch.zeros(3))[1])  # no angle with a zero g_kl


def test_projection_rejects_vectors_of_different_length():
    with pytest.raises(InputError):
        project_conflict(torch.ones(3), torch.ones(4))


# --- weights and schedule ---------------------------------------------------------------------

def test_lower_loss_modality_gets_the_lower_kl_weight():
    w_v, w_l = kl_weights(0.2, 1.0)
    assert (w_v, w_l) == pytest.approx((1 / 6, 5 / 6))
    assert kl_weights(3.0, 1.0) == pytest.approx((0.75, 0.25))
    assert kl_weights(0.0, 0.0) == (0.5, 0.5)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(InputError):
            kl_weights(bad, 1.0)


def test_lambda_rises_linearly_from_initial_to_one_over_the_steps():
    schedule = LambdaSchedule(kind="linear", initial=0.1, total_steps=11)
    values = [schedule.at(step) for step in range(11)]
    assert values[0] == pytest.approx(0.1) and values[-1] == pytest.approx(1.0)
    assert values == pytest.approx([0.1 + 0.09 * step for step in range(11)])
    assert schedule.at(40) == pytest.approx(1.0)  # a loop that runs over does not exceed 1
    assert LambdaSchedule(initial=0.3, total_steps=1).at(0) == pytest.approx(0.3)


def test_constant_lambda_stays_at_the_initial_factor():
    schedule = LambdaSchedule(kind="constant", initial=0.25)
    assert [schedule.at(step) for step in (0, 1, 500)] == [0.25, 0.25, 0.25]


@pytest.mark.parametrize("kwargs", [dict(kind="cosine", total_steps=5), dict(initial=1.5, total_steps=5),
                                    dict(initial=-0.1, total_steps=5), dict(total_steps=0), dict()])
def test_bad_lambda_schedule_is_refused(kwargs):
    with pytest.raises(InputError):
        LambdaSchedule(**kwargs)


def test_negative_step_is_refused():
    with pytest.raises(InputError):
        LambdaSchedule(total_steps=5).at(-1)


# --- unimodal passes and KL -------------------------------------------------------------------

def test_unimodal_passes_do_not_reach_the_classifier():
    model, _, _, _, unimodal, _ = tiny_setup(0)
    head = list(model.classifier.parameters())
    assert all(g is None for g in torch.autograd.grad(unimodal["image"], head, retain_graph=True, allow_unused=True))
    image_grads = torch.autograd.grad(unimodal["image"], list(model.image_branch.parameters()), retain_graph=True)
    assert all(g.abs().sum() > 0 for g in image_grads)
    text_grads = torch.autograd.grad(unimodal["image"], list(model.text_branch.parameters()), allow_unused=True)
    assert all(g is None for g in text_grads)  # the text embedding was replaced by zeros


@pytest.mark.parametrize("head_mode", HEAD_MODES)
def test_unimodal_logits_of_every_head_mode_are_the_hand_computed_ones(head_mode):
    torch.manual_seed(1)
    model, adapter, batch = TinyLateFusion(), TinyAdapter(), tiny_batch(1)
    method = BalGrad(head_mode=head_mode)
    method.prepare(model, adapter, device=CPU)
    fused, single = method.logits(model, adapter, adapter.prepare(batch, device=CPU))
    expected = hand_unimodal(model, method, batch)
    assert list(single) == ["image", "text"]
    for m in ("image", "text"):
        assert torch.allclose(single[m], expected[m], atol=1e-6), m
    assert torch.allclose(fused, model(batch["image"], batch["text"]))


def test_mutual_kl_has_the_known_value_and_stops_the_gradient_of_the_target():
    logits_v = torch.zeros(1, 2, requires_grad=True)  # p_v = (0.5, 0.5)
    logits_l = torch.log(torch.tensor([[0.25, 0.75]])).requires_grad_()
    kl = mutual_kl({"image": logits_v, "text": logits_l})
    assert value(kl["image"]) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))  # KL(p_l || p_v)
    assert value(kl["text"]) == pytest.approx(0.5 * math.log(2.0) + 0.5 * math.log(2 / 3))  # KL(p_v || p_l)
    assert torch.autograd.grad(kl["image"], logits_l, allow_unused=True)[0] is None
    undirected = mutual_kl({"image": logits_v, "text": logits_l}, mode="undirected")
    assert undirected["image"] is undirected["text"]
    assert value(undirected["image"]) == pytest.approx(value(kl["text"]))
    assert torch.autograd.grad(undirected["image"], logits_l)[0].abs().sum() > 0


def test_kl_needs_exactly_two_modalities():
    with pytest.raises(InputError):
        mutual_kl({"a": torch.zeros(1, 2), "b": torch.zeros(1, 2), "c": torch.zeros(1, 2)})


# --- the step ---------------------------------------------------------------------------------

def test_classifier_gets_no_kl_or_unimodal_gradient_even_with_an_undetached_head():
    torch.manual_seed(0)
    model, batch = TinyLateFusion(), tiny_batch(0)
    z = {"image": model.image_branch(batch["image"]), "text": model.text_branch(batch["text"])}
    # A careless caller: the unimodal passes reach the classifier's live weights.
    single = {m: model.classifier(torch.cat([z[k] if k == m else torch.zeros_like(z[k]) for k in z], 1)) for m in z}
    unimodal = {m: F.cross_entropy(o, batch["label"]) for m, o in single.items()}
    task_loss = 0.0 * F.cross_entropy(model(batch["image"], batch["text"]), batch["label"])
    task, branches = split_parameters(model, {"image": model.image_branch, "text": model.text_branch})
    balgrad_step(task_loss, unimodal, mutual_kl(single), task_params=task, branch_params=branches, lam=1.0)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.classifier.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.image_branch.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.text_branch.parameters())


def test_classifier_gradient_is_the_task_gradient_whatever_lambda():
    grads = {}
    for lam in (0.0, 1.0):
        model, task, branches, task_loss, unimodal, kl = tiny_setup(3)
        expected = flat_grad(task_loss, task)
        balgrad_step(task_loss, unimodal, kl, task_params=task, branch_params=branches, lam=lam)
        assert torch.equal(flat_dot_grad(task), expected)
        grads[lam] = flat_dot_grad(branches["image"] + branches["text"])
    assert not torch.allclose(grads[0.0], grads[1.0])  # λ does reach the branches


def hand_kl(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || softmax(logits)), batch mean."""
    p = torch.softmax(target_logits, 1)
    return (p * (torch.log(p) - torch.log_softmax(logits, 1))).sum(1).mean()


@pytest.mark.parametrize("head_mode", HEAD_MODES)
@pytest.mark.parametrize("kl_mode", ["mutual", "undirected"])
def test_balgrad_step_writes_the_formula_gradients_for_every_head_mode(kl_mode, head_mode):
    outcomes = set()
    for seed in range(30):
        torch.manual_seed(seed)
        model, adapter, batch = TinyLateFusion(), TinyAdapter(), tiny_batch(seed)
        lam, beta = 0.7, 1.0
        method = BalGrad(kl_mode=kl_mode, head_mode=head_mode, lambda_initial=lam, beta=beta)
        method.prepare(model, adapter, device=CPU)
        # The hand side: methods.md 7.1-7.6 from the weights.
        task = list(model.classifier.parameters())
        branches = {"image": list(model.image_branch.parameters()), "text": list(model.text_branch.parameters())}
        params = task + branches["image"] + branches["text"]
        labels = batch["label"]
        g_task = flat_grad(F.cross_entropy(model(batch["image"], batch["text"]), labels), params).double()
        single = hand_unimodal(model, method, batch)
        loss = {m: F.cross_entropy(o, labels) for m, o in single.items()}
        if kl_mode == "mutual":
            kl = {"image": hand_kl(single["text"].detach(), single["image"]), "text": hand_kl(single["image"].detach(), single["text"])}
        else:
            kl = {m: hand_kl(single["image"], single["text"]) for m in single}
        w_v, w_l = value(loss["image"]) / (value(loss["image"]) + value(loss["text"])), value(loss["text"]) / (value(loss["image"]) + value(loss["text"]))
        zeros = torch.zeros(sum(p.numel() for p in task), dtype=torch.float64)
        g_kl = torch.cat([zeros, lam * w_v * flat_grad(kl["image"], branches["image"]).double(),
                          lam * w_l * flat_grad(kl["text"], branches["text"]).double()])
        inner = torch.dot(g_task, g_kl)
        projected = g_task - inner / torch.dot(g_kl, g_kl) * g_kl if inner < 0 else g_task
        g_uni = torch.cat([zeros, beta * flat_grad(loss["image"], branches["image"]).double(),
                           beta * flat_grad(loss["text"], branches["text"]).double()])
        # The production side: the gradients the method writes for the loop's optimiser to apply.
        log = method.gradients(model, adapter, batch, step=0, total_steps=1, device=CPU)
        assert torch.allclose(flat_dot_grad(params).double(), projected + g_kl + g_uni, atol=1e-6)
        assert log["conflicted"] == bool(inner < 0)
        assert (log["weight_v"], log["weight_l"], log["lam"]) == pytest.approx((w_v, w_l, lam))
        assert (log["loss_v"], log["loss_l"]) == pytest.approx((value(loss["image"]), value(loss["text"])), rel=1e-6)
        if log["conflicted"]:
            assert log["cos_before"] < 0 and log["cos_after"] == pytest.approx(0.0, abs=1e-6)
        outcomes.add(log["conflicted"])
    assert outcomes == {True, False}  # both paths were exercised


def test_per_modality_projection_removes_the_conflict_in_each_branch():
    conflicted_steps = 0
    for seed in range(30):
        model, task, branches, task_loss, unimodal, kl = tiny_setup(seed)
        kl_grads = {}
        for m in ("image", "text"):
            weight = value(unimodal[m]) / (value(unimodal["image"]) + value(unimodal["text"]))
            kl_grads[m] = weight * flat_grad(kl[m], branches[m])
        log = balgrad_step(task_loss, unimodal, kl, task_params=task, branch_params=branches, lam=1.0,
                           beta=0.0, projection="per_modality")
        for m in ("image", "text"):
            projected_task = flat_dot_grad(branches[m]) - kl_grads[m]  # β = 0: grad = g_T'|m + g_kl|m
            assert float(torch.dot(projected_task, kl_grads[m])) >= -1e-5
        conflicted_steps += log.conflicted
    assert conflicted_steps > 0


def test_one_step_changes_the_weights_and_is_reproducible():
    finals = []
    for _ in range(2):
        model, task, branches, task_loss, unimodal, kl = tiny_setup(7)
        start = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        balgrad_step(task_loss, unimodal, kl, task_params=task, branch_params=branches,
                     lam=LambdaSchedule(total_steps=10).at(0))
        optimizer.step()
        assert all(not torch.equal(a, p) for a, p in zip(start, model.parameters()))
        finals.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*finals))


def test_step_replaces_stale_gradients_instead_of_adding_to_them():
    model, task, branches, task_loss, unimodal, kl = tiny_setup(2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    expected = flat_grad(task_loss, task)
    balgrad_step(task_loss, unimodal, kl, task_params=task, branch_params=branches, lam=0.5)
    assert torch.equal(flat_dot_grad(task), expected)


def test_step_refuses_inconsistent_inputs():
    model, task, branches, task_loss, unimodal, kl = tiny_setup(0)
    with pytest.raises(InputError):  # losses keyed differently from the branches
        balgrad_step(task_loss, {"text": unimodal["text"], "image": unimodal["image"]}, kl,
                     task_params=task, branch_params=branches, lam=0.5)
    with pytest.raises(InputError):  # the classifier counted as a branch too
        balgrad_step(task_loss, unimodal, kl, task_params=task,
                     branch_params={"image": branches["image"] + task, "text": branches["text"]}, lam=0.5)
    with pytest.raises(InputError):
        balgrad_step(task_loss, unimodal, kl, task_params=task, branch_params=branches, lam=0.5, projection="pcgrad")
    with pytest.raises(InputError):
        balgrad_step(task_loss, unimodal, kl, task_params=task, branch_params=branches, lam=-1.0)


def test_split_parameters_of_the_demo_model():
    model = DemoModel()
    model.text_branch[0].bias.requires_grad_(False)
    task, branches = split_parameters(model, {"image": model.image_branch, "text": model.text_branch})
    assert [id(p) for p in task] == [id(p) for p in model.classifier.parameters()]
    assert list(branches) == ["image", "text"]
    assert len(branches["image"]) == 4 and [id(p) for p in branches["text"]] == [id(model.text_branch[0].weight)]
    with pytest.raises(AdapterError):
        split_parameters(model, {"image": model.image_branch, "both": model})
    with pytest.raises(AdapterError):
        split_parameters(model, {"image": model.image_branch, "other": nn.Linear(2, 2)})


def test_step_log_is_json_ready():
    log = BalGradStep(loss_task=1.0, loss_v=0.5, loss_l=2.0, weight_v=0.2, weight_l=0.8, lam=0.1,
                  cos_before=math.nan, cos_after=math.nan, conflicted=False)
    assert log.to_dict() == {"loss_task": 1.0, "loss_v": 0.5, "loss_l": 2.0, "weight_v": 0.2, "weight_l": 0.8,
                             "lam": 0.1, "cos_before": None, "cos_after": None, "conflicted": False}


class ShiftedInPlace(TinyLateFusion):
    """The fusion shifts each branch output in place (z += 1), as positional or bias additions often do."""

    def forward(self, image, text):
        z_image, z_text = self.image_branch(image), self.text_branch(text)
        z_image += 1.0
        z_text += 1.0
        return self.classifier(torch.cat([z_image, z_text], dim=1))


def test_an_in_place_operation_after_a_branch_does_not_change_what_the_unimodal_passes_read():
    # Were the captured z_v the tensor the model goes on to modify, o_v would be computed on z_v + 2 (silently).
    torch.manual_seed(4)
    model, adapter, batch = ShiftedInPlace(), TinyAdapter(), tiny_batch(4)
    method = BalGrad()
    method.prepare(model, adapter, device=CPU)
    fused, single = method.logits(model, adapter, adapter.prepare(batch, device=CPU))
    z_image, z_text = model.image_branch(batch["image"]), model.text_branch(batch["text"])
    expected_image = model.classifier(torch.cat([z_image + 1.0, torch.ones_like(z_text)], 1))
    assert torch.allclose(single["image"], expected_image, atol=1e-6)
    assert torch.allclose(fused, model(batch["image"], batch["text"]), atol=1e-6)
    method.gradients(model, adapter, batch, step=0, total_steps=1, device=CPU)  # backward must not fail
