"""BalGrad as a backward for any loop (issue 21, item 1; methods.md section 7): the written gradients against the hand
formula of tests/test_balgrad.py through the public entry point, a plain PyTorch loop equal to biasaudit's loop,
gradient scaling, the running-weights state, DDP (two gloo processes equal one process on the global batch) and the
argument checks."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
from biasaudit.errors import InputError
from biasaudit.methods import BalGrad, UnimodalHeads
from biasaudit.training.epoch_batches import count_steps, shuffled_batches
from biasaudit.training.loop import train
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.methods import make_method

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import method_ddp  # noqa: E402
from method_models import TinyLateFusion, branches_of, tiny_batch  # noqa: E402

sys.path.pop(0)


def tiny(seed: int):
    torch.manual_seed(seed)
    model, batch = TinyLateFusion(), tiny_batch(seed)
    return model, batch["image"], batch["text"], batch["label"]


def flat_grad(loss, params):
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def hand_kl(target_logits, logits):
    p = torch.softmax(target_logits, 1)
    return (p * (torch.log(p) - torch.log_softmax(logits, 1))).sum(1).mean()


@pytest.mark.parametrize("kl_mode", ["mutual", "undirected"])
def test_backward_writes_the_formula_gradients(kl_mode):
    outcomes = set()
    for seed in range(20):
        model, a, b, y = tiny(seed)
        lam, beta = 0.7, 0.5
        # The hand side (methods.md 7.1-7.6 from the weights), as in tests/test_balgrad.py.
        task, branch = list(model.classifier.parameters()), {m: list(part.parameters()) for m, part in branches_of(model).items()}
        params = task + branch["image"] + branch["text"]
        g_task = flat_grad(F.cross_entropy(model(a, b), y), params).double()
        W, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
        z = {"image": model.image_branch(a), "text": model.text_branch(b)}
        single = {"image": F.linear(torch.cat([z["image"], torch.zeros_like(z["text"])], 1), W, bias),
                  "text": F.linear(torch.cat([torch.zeros_like(z["image"]), z["text"]], 1), W, bias)}
        loss = {m: F.cross_entropy(o, y) for m, o in single.items()}
        if kl_mode == "mutual":
            kl = {"image": hand_kl(single["text"].detach(), single["image"]), "text": hand_kl(single["image"].detach(), single["text"])}
        else:
            kl = {m: hand_kl(single["image"], single["text"]) for m in single}
        total = loss["image"].item() + loss["text"].item()
        w = {m: loss[m].item() / total for m in loss}
        zeros = torch.zeros(sum(p.numel() for p in task), dtype=torch.float64)
        g_kl = torch.cat([zeros] + [lam * w[m] * flat_grad(kl[m], branch[m]).double() for m in ("image", "text")])
        inner = torch.dot(g_task, g_kl)
        projected = g_task - inner / torch.dot(g_kl, g_kl) * g_kl if inner < 0 else g_task
        g_uni = torch.cat([zeros] + [beta * flat_grad(loss[m], branch[m]).double() for m in ("image", "text")])
        # The public side: heads + backward, as in a user's loop.
        heads = UnimodalHeads(model, branches_of(model))
        balgrad = BalGrad(branches_of(model), lambda_initial=lam, beta=beta, kl_mode=kl_mode)
        with heads.capture():
            logits = model(a, b)
        step = balgrad.backward(F.cross_entropy(logits, y), heads.logits(lambda: model(a, b)), y, step=0, total_steps=1)
        got = torch.cat([p.grad.reshape(-1) for p in params]).double()
        torch.testing.assert_close(got, projected + g_kl + g_uni, atol=1e-6, rtol=1e-5)
        assert step is balgrad.last and step.conflicted == bool(inner < 0)
        assert (step.weight_v, step.weight_l, step.lam) == pytest.approx((w["image"], w["text"], lam))
        outcomes.add(step.conflicted)
    assert outcomes == {True, False}


def test_backward_adds_to_existing_gradients_and_scales_with_the_loss_scale():
    model, a, b, y = tiny(3)
    heads = UnimodalHeads(model, branches_of(model))

    def grads(scale: float, existing: float | None):
        for p in model.parameters():
            p.grad = None if existing is None else torch.full_like(p, existing)
        balgrad = BalGrad(branches_of(model), lambda_initial=1.0)
        with heads.capture():
            logits = model(a, b)
        step = balgrad.backward(F.cross_entropy(logits, y) * scale, heads.logits(lambda: model(a, b)), y, step=0,
                                total_steps=1, loss_scale=scale)
        return [p.grad.clone() for p in model.parameters()], step

    plain, step = grads(1.0, None)
    added, _ = grads(1.0, 2.0)
    scaled, scaled_step = grads(1024.0, None)
    for p, q, r in zip(plain, added, scaled):
        torch.testing.assert_close(q, p + 2.0)
        torch.testing.assert_close(r / 1024.0, p)
    assert scaled_step.loss_task == pytest.approx(step.loss_task) and scaled_step.conflicted == step.conflicted


def test_running_weights_are_state_that_saves_and_loads():
    model, a, b, y = tiny(4)
    heads = UnimodalHeads(model, branches_of(model))
    balgrad = BalGrad(branches_of(model), weights="running")
    with heads.capture():
        logits = model(a, b)
    step = balgrad.backward(F.cross_entropy(logits, y), heads.logits(lambda: model(a, b)), y, step=0, total_steps=5)
    state = balgrad.state_dict()
    assert state["running"] == pytest.approx([step.loss_v, step.loss_l])
    fresh = BalGrad(branches_of(model), weights="running")
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    with pytest.raises(InputError, match="'state'"):
        BalGrad(branches_of(model)).load_state_dict(state)


# ---- a plain PyTorch loop equals biasaudit's loop ------------------------------------------------------------------------
@pytest.mark.parametrize("head_mode", ["shared_zero", "separate"])
def test_a_plain_loop_with_the_components_gives_the_weights_of_biasaudits_loop(head_mode):
    adapter = DigitsCaptionsAdapter()
    baseline = train_baseline(adapter, seed=0, epochs=1)
    config = TrainConfig(epochs=2, seed=0, batch_size=128)
    ours = copy.deepcopy(baseline)
    log = train(ours, adapter, make_method("balgrad", head_mode=head_mode), config=config)

    model = copy.deepcopy(baseline)
    cpu = torch.device("cpu")
    branches = {"image": model.image_branch, "text": model.text_branch}
    widths = {"image": 32, "text": 32} if head_mode == "separate" else None
    torch.manual_seed(config.seed)  # the loop's seeded run: the separate heads are seeded by torch.initial_seed()
    heads = UnimodalHeads(model, branches, mode=head_mode, num_classes=10 if widths else None, widths=widths,
                          seed=torch.initial_seed())
    balgrad = BalGrad(branches, model=model)
    optimizer = torch.optim.Adam(list(model.parameters()) + heads.parameters(), lr=config.lr)
    total = count_steps(adapter, config=config) * config.epochs
    step, logged = 0, []
    model.train()
    for epoch in range(config.epochs):
        for batch in shuffled_batches(adapter, config=config, epoch=epoch):
            x_img, x_txt = adapter.prepare(batch, device=cpu)
            y = torch.as_tensor(batch[adapter.label_key])
            optimizer.zero_grad()
            with heads.capture():
                logits = model(x_img, x_txt)
            unimodal = heads.logits(lambda: model(x_img, x_txt))
            logged.append(balgrad.backward(F.cross_entropy(logits, y), unimodal, y, step=step, total_steps=total))
            optimizer.step()
            step += 1
    assert len(logged) == len(log) and [s.conflicted for s in logged] == [e["conflicted"] for e in log]
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=1e-6, rtol=0)


# ---- argument checks: one sentence, nothing written -----------------------------------------------------------------------
def test_mistakes_are_refused_before_any_gradient_is_written():
    model, a, b, y = tiny(0)
    balgrad = BalGrad(branches_of(model))
    heads = UnimodalHeads(model, branches_of(model))
    with heads.capture():
        logits = model(a, b)
    unimodal = heads.logits(lambda: model(a, b))
    fused = F.cross_entropy(logits, y)
    only_image = F.cross_entropy(model.classifier(torch.cat([model.image_branch(a), torch.zeros(6, 2)], 1)), y)
    with pytest.raises(InputError, match=r"'fused_loss'.*does not depend on branch 'text'"):
        balgrad.backward(only_image, unimodal, y, step=0, total_steps=1)
    with pytest.raises(InputError, match=r"'unimodal_logits'.*'text' logits of shape \(6, 2\)"):
        balgrad.backward(fused, {"image": unimodal["image"], "text": unimodal["text"][:, :2]}, y, step=0, total_steps=1)
    with pytest.raises(InputError, match=r"'unimodal_logits'.*'text' logits that do not depend on branch 'text'"):
        balgrad.backward(fused, {"image": unimodal["image"], "text": unimodal["image"] * 2}, y, step=0, total_steps=1)
    with pytest.raises(InputError, match=r"'unimodal_logits'.*keyed 'image', 'text'"):
        balgrad.backward(fused, {"image": unimodal["image"]}, y, step=0, total_steps=1)
    with pytest.raises(InputError, match="'total_steps'"):
        balgrad.backward(fused, unimodal, y, step=0, total_steps=0)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(InputError, match="'branches'.*exactly two"):
        BalGrad({**branches_of(model), "head": model.classifier})
    with pytest.raises(InputError, match="'lambda_initial'"):
        BalGrad(branches_of(model), lambda_initial=1.5)
    with pytest.raises(InputError, match="'projection'"):
        BalGrad(branches_of(model), projection="pcgrad")


# ---- DDP: two gloo processes on halves of the batch equal one process on the whole ----------------------------------------
@pytest.mark.parametrize("mode", ["shared_zero", "separate"])
def test_two_ddp_processes_on_half_batches_equal_one_process_on_the_whole_batch(mode, tmp_path, gloo_ranks):
    ranks, (single, steps) = method_ddp.on_two_ranks_and_one(gloo_ranks, tmp_path, "balgrad", mode)
    for saved in ranks:
        for got, want in zip(saved["steps"], steps):
            assert got["conflicted"] == want["conflicted"]
            assert [got[k] for k in ("loss_v", "loss_l", "weight_v", "lam")] == \
                pytest.approx([want[k] for k in ("loss_v", "loss_l", "weight_v", "lam")], rel=1e-5)
        for name, grad in single.items():
            torch.testing.assert_close(saved["grads"][name], grad, atol=1e-5, rtol=1e-5)
