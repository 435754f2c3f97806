"""BalGrad as a backward for any loop (issue 21, item 1; methods.md section 7): the written gradients against the hand
formula of tests/test_balgrad.py through the public entry point, a plain PyTorch loop equal to biasaudit's loop,
gradient scaling, the running-weights state, DDP (two gloo processes equal one process on the global batch) and the
argument checks."""

from __future__ import annotations

import copy
import runpy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
from biasaudit.errors import InputError
from biasaudit.methods import BalGrad, UnimodalHeads
from biasaudit.training.loop import TrainConfig, count_steps, shuffled_batches, train
from biasaudit.training.methods import make_method


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(3, 2)
        self.text = nn.Linear(4, 2)
        self.head = nn.Linear(4, 3)

    def forward(self, a, b):
        return self.head(torch.cat([self.image(a), self.text(b)], dim=1))


def tiny(seed: int):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(1000 + seed)
    return Tiny(), torch.randn(6, 3, generator=generator), torch.randn(6, 4, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2])


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
        task, branch = list(model.head.parameters()), {"image": list(model.image.parameters()), "text": list(model.text.parameters())}
        params = task + branch["image"] + branch["text"]
        g_task = flat_grad(F.cross_entropy(model(a, b), y), params).double()
        W, bias = model.head.weight.detach(), model.head.bias.detach()
        z = {"image": model.image(a), "text": model.text(b)}
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
        heads = UnimodalHeads(model, {"image": model.image, "text": model.text})
        balgrad = BalGrad({"image": model.image, "text": model.text}, lambda_initial=lam, beta=beta, kl_mode=kl_mode)
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
    heads = UnimodalHeads(model, {"image": model.image, "text": model.text})

    def grads(scale: float, existing: float | None):
        for p in model.parameters():
            p.grad = None if existing is None else torch.full_like(p, existing)
        balgrad = BalGrad({"image": model.image, "text": model.text}, lambda_initial=1.0)
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
    heads = UnimodalHeads(model, {"image": model.image, "text": model.text})
    balgrad = BalGrad({"image": model.image, "text": model.text}, weights="running")
    with heads.capture():
        logits = model(a, b)
    step = balgrad.backward(F.cross_entropy(logits, y), heads.logits(lambda: model(a, b)), y, step=0, total_steps=5)
    state = balgrad.state_dict()
    assert state["running"] == pytest.approx([step.loss_v, step.loss_l])
    fresh = BalGrad({"image": model.image, "text": model.text}, weights="running")
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    with pytest.raises(InputError, match="'state'"):
        BalGrad({"image": model.image, "text": model.text}).load_state_dict(state)


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
    balgrad = BalGrad({"image": model.image, "text": model.text})
    heads = UnimodalHeads(model, {"image": model.image, "text": model.text})
    with heads.capture():
        logits = model(a, b)
    unimodal = heads.logits(lambda: model(a, b))
    fused = F.cross_entropy(logits, y)
    only_image = F.cross_entropy(model.head(torch.cat([model.image(a), torch.zeros(6, 2)], 1)), y)
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
        BalGrad({"image": model.image, "text": model.text, "head": model.head})
    with pytest.raises(InputError, match="'lambda_initial'"):
        BalGrad({"image": model.image, "text": model.text}, lambda_initial=1.5)
    with pytest.raises(InputError, match="'projection'"):
        BalGrad({"image": model.image, "text": model.text}, projection="pcgrad")


# ---- DDP: two gloo processes on halves of the batch equal one process on the whole ----------------------------------------
WORKER = '''
import sys, torch, torch.nn as nn, torch.nn.functional as F
from biasaudit.methods import BalGrad, UnimodalHeads

class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision, self.text, self.head = nn.Linear(4, 3), nn.Linear(2, 3), nn.Linear(6, 3)
    def forward(self, a, b):
        return self.head(torch.cat([torch.tanh(self.vision(a)), torch.tanh(self.text(b))], 1))

def train(rank, world, mode):
    """Four SGD steps of BalGrad on this rank's share of a fixed global batch of 8."""
    torch.manual_seed(0)
    model = TwoBranch()
    a, b, y = torch.randn(8, 4), torch.randn(8, 2) * 3, torch.randint(0, 3, (8,))
    share = slice(rank * 8 // world, (rank + 1) * 8 // world)
    wrapped = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    branches = {"image": model.vision, "text": model.text}
    heads = UnimodalHeads(model, branches, mode=mode, num_classes=3, widths={"image": 3, "text": 3}, seed=1)
    balgrad = BalGrad(branches, lambda_initial=0.5, weights="running")
    optimizer = torch.optim.SGD(list(model.parameters()) + heads.parameters(), lr=1.0)
    steps = []
    for step in range(4):
        optimizer.zero_grad()
        x, z, t = a[share], b[share], y[share]
        with heads.capture():
            if world > 1:
                with wrapped.no_sync():
                    logits = wrapped(x, z)
            else:
                logits = model(x, z)
        unimodal = heads.logits(lambda: model(x, z))
        steps.append(balgrad.backward(F.cross_entropy(logits, t), unimodal, t, step=step, total_steps=4))
        optimizer.step()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    grads.update({f"head{i}": p.grad.clone() for i, p in enumerate(heads.parameters())})
    return grads, [s.to_dict() for s in steps]

if __name__ == "__main__":
    import torch.distributed as dist
    dist.init_process_group("gloo")
    grads, steps = train(dist.get_rank(), dist.get_world_size(), sys.argv[2])
    torch.save({"grads": grads, "steps": steps}, sys.argv[1])
    dist.destroy_process_group()
'''


@pytest.mark.parametrize("mode", ["shared_zero", "separate"])
def test_two_ddp_processes_on_half_batches_equal_one_process_on_the_whole_batch(mode, tmp_path, gloo_ranks):
    script = tmp_path / "balgrad_worker.py"
    script.write_text(WORKER)
    outputs = [tmp_path / "rank0.pt", tmp_path / "rank1.pt"]
    gloo_ranks.run_ok([[script, outputs[0], mode], [script, outputs[1], mode]])
    with torch.random.fork_rng():
        single, steps = runpy.run_path(str(script))["train"](0, 1, mode)
    for output in outputs:
        saved = torch.load(output, weights_only=True)
        for got, want in zip(saved["steps"], steps):
            assert got["conflicted"] == want["conflicted"]
            assert [got[k] for k in ("loss_v", "loss_l", "weight_v", "lam")] == \
                pytest.approx([want[k] for k in ("loss_v", "loss_l", "weight_v", "lam")], rel=1e-5)
        for name, grad in single.items():
            torch.testing.assert_close(saved["grads"][name], grad, atol=1e-5, rtol=1e-5)
