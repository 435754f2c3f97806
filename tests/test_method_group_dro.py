"""Group DRO as a loss for any loop (biasaudit/methods/group_dro.py; methods.md section 8, issue 21 item 1): the q update
and the loss against a hand computation, absent groups, saving and resuming q, arguments refused before q moves, and
two gloo processes under DDP equal to one process on the global batch."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biasaudit.errors import ArgumentTypeError, InputError
from biasaudit.methods.group_dro import GroupDRO, group_ids

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import method_ddp  # noqa: E402

sys.path.pop(0)



def losses_of(*values: float) -> torch.Tensor:
    return torch.tensor(values, requires_grad=True)


def test_q_moves_towards_the_worse_group_and_the_loss_weighs_group_means_by_the_new_q():
    gdro = GroupDRO(3, eta=0.5)
    losses = losses_of(1.0, 3.0, 4.0)
    loss = gdro.loss(losses, torch.tensor([0, 0, 1]))  # L_0 = 2 (two samples), L_1 = 4, group 2 absent
    raw = [math.exp(0.5 * 2) / 3, math.exp(0.5 * 4) / 3, 1 / 3]
    q = [v / sum(raw) for v in raw]
    assert gdro.q.tolist() == pytest.approx(q, rel=1e-6)
    assert loss.item() == pytest.approx(q[0] * 2 + q[1] * 4, rel=1e-6)  # the absent group adds nothing
    loss.backward()
    assert losses.grad.tolist() == pytest.approx([q[0] / 2, q[0] / 2, q[1]], rel=1e-6)  # d loss / d l_i = q_g / n_g
    assert torch.isnan(gdro.last.group_losses[2]) and gdro.last.counts.tolist() == [2, 1, 0]

    # A second step multiplies on: group 2 is present now, group 1 absent (its q only renormalises).
    loss = gdro.loss(losses_of(1.0, 5.0), torch.tensor([2, 0]))
    raw = [q[0] * math.exp(0.5 * 5), q[1], q[2] * math.exp(0.5 * 1)]
    q = [v / sum(raw) for v in raw]
    assert gdro.q.tolist() == pytest.approx(q, rel=1e-6)
    assert loss.item() == pytest.approx(q[0] * 5 + q[2] * 1, rel=1e-6)


def test_the_default_eta_is_0_01_and_q_starts_uniform():
    gdro = GroupDRO(4)
    assert gdro.eta == 0.01 and gdro.q.tolist() == [0.25] * 4
    gdro.loss(losses_of(2.0), torch.tensor([1]))
    raw = [0.25, 0.25 * math.exp(0.02), 0.25, 0.25]
    assert gdro.q.tolist() == pytest.approx([v / sum(raw) for v in raw], rel=1e-6)


def test_q_starts_uniform_over_the_groups_seen_in_train_and_an_unseen_group_is_refused_in_training():
    gdro = GroupDRO.from_train_groups(torch.tensor([0, 0, 2, 2, 2]), num_groups=4)
    assert gdro.q.tolist() == [0.5, 0.0, 0.5, 0.0]
    with pytest.raises(InputError, match=r"'groups' parameter of GroupDRO\.loss holds group 1, which was not seen in train"):
        gdro.loss(losses_of(1.0, 1.0), torch.tensor([0, 1]))
    assert gdro.q.tolist() == [0.5, 0.0, 0.5, 0.0]
    with pytest.raises(InputError, match="'present' parameter of GroupDRO"):
        GroupDRO(3, present=[False, False, False])


def test_group_ids_number_groups_as_the_audit_does():
    labels, bias = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 0, 1])
    assert group_ids(labels, bias, num_bias=2).tolist() == (labels * 2 + bias).tolist() == [0, 1, 3, 4, 5]
    with pytest.raises(InputError, match="'bias' parameter of .*group_ids holds 2; expected bias values from 0 to 1"):
        group_ids(labels, np.array([0, 1, 2, 0, 1]), num_bias=2)
    with pytest.raises(InputError, match="'bias' parameter .* has 2 values and 'labels' 5"):
        group_ids(labels, np.array([0, 1]), num_bias=2)


def test_saved_q_resumes_the_same_run():
    steps = [(losses_of(1.0, 2.0, 7.0), torch.tensor([0, 1, 2])), (losses_of(3.0, 1.0), torch.tensor([2, 2]))]
    straight = GroupDRO(3, eta=0.3)
    straight.loss(*steps[0])
    saved = straight.state_dict()
    straight_loss = straight.loss(*steps[1])
    resumed = GroupDRO(3, eta=0.3)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.loss(*steps[1]), straight_loss) and torch.equal(resumed.q, straight.q)
    with pytest.raises(InputError, match="holds q for 3 groups; expected 5"):
        GroupDRO(5).load_state_dict(saved)


@pytest.mark.parametrize("groups, words", [
    (torch.tensor([0, 3]), r"'groups' parameter of GroupDRO\.loss holds 3; expected groups from 0 to 2"),
    (torch.tensor([-1, 0]), r"'groups' parameter of GroupDRO\.loss holds -1"),
    (torch.tensor([0.0, 1.0]), r"'groups' parameter of GroupDRO\.loss is a torch\.float32 tensor .* expected a 1-D tensor of integers"),
    (torch.tensor([0, 1, 2]), r"'groups' parameter of GroupDRO\.loss has 3 values and 'per_sample_losses' 2"),
])
def test_bad_groups_are_refused_in_one_sentence_before_q_moves(groups, words):
    gdro = GroupDRO(3, eta=1.0)
    with pytest.raises(InputError, match=words):
        gdro.loss(losses_of(1.0, 2.0), groups)
    assert gdro.q.tolist() == pytest.approx([1 / 3] * 3) and gdro.last is None


def test_losses_that_cannot_train_are_refused():
    gdro = GroupDRO(2)
    with pytest.raises(InputError, match="'per_sample_losses' parameter of GroupDRO.loss does not require grad"):
        gdro.loss(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))
    with pytest.raises(InputError, match="expected a non-empty 1-D float tensor, one loss per sample"):
        gdro.loss(torch.tensor(1.0, requires_grad=True), torch.tensor([0]))
    with pytest.raises(ArgumentTypeError, match="'groups' parameter of GroupDRO.loss must be a torch.Tensor; got list"):
        gdro.loss(losses_of(1.0), [0])
    with pytest.raises(InputError, match="'eta' parameter of GroupDRO"):
        GroupDRO(2, eta=-0.1)
    assert gdro.q.tolist() == [0.5, 0.5]


def test_evaluating_under_no_grad_leaves_q_alone():
    gdro = GroupDRO(2, eta=1.0)
    with torch.no_grad():
        loss = gdro.loss(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(0.5 * 1 + 0.5 * 3) and gdro.q.tolist() == [0.5, 0.5]


def test_global_random_generators_are_untouched():
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    gdro = GroupDRO.from_train_groups(torch.tensor([0, 1, 2]), num_groups=3)
    gdro.loss(losses_of(1.0, 2.0, 3.0), torch.tensor([0, 1, 2])).backward()
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))


# ---- DDP: two gloo processes equal one process on the global batch ------------------------------------------------
# Three steps of SGD on a linear model; rank 0 holds 5 rows of each global batch of 8 and rank 1 the other 3, and the
# groups are spread so that some occur on one rank only and one is absent from a whole step.
GROUPS = [[0, 0, 1, 2, 2, 3, 3, 1], [0, 0, 0, 0, 2, 1, 1, 1], [3, 3, 3, 2, 2, 2, 2, 0]]
SPLIT = 5


def _data() -> tuple[dict, list]:
    generator = torch.Generator().manual_seed(7)
    state = {"weight": torch.randn(3, 4, generator=generator), "bias": torch.randn(3, generator=generator)}
    batches = [(torch.randn(8, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator), torch.tensor(g)) for g in GROUPS]
    return state, batches


def test_two_ddp_processes_move_q_and_the_weights_as_one_process_on_the_global_batch(tmp_path, gloo_ranks):
    state, batches = _data()
    ranks = method_ddp.on_two_ranks(gloo_ranks, tmp_path, "group_dro", {"state": state, "batches": batches, "split": SPLIT})

    model = torch.nn.Linear(4, 3)
    model.load_state_dict(state)
    gdro = GroupDRO(4, eta=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for step, (x, y, g) in enumerate(batches):
        loss = gdro.loss(F.cross_entropy(model(x), y, reduction="none"), g)
        optimizer.zero_grad()
        loss.backward()
        for rank in ranks:
            torch.testing.assert_close(rank[step]["q"], gdro.q, atol=1e-5, rtol=0)
            torch.testing.assert_close(rank[step]["loss"], loss.detach(), atol=1e-5, rtol=0)
            for got, want in zip(rank[step]["grads"], (p.grad for p in model.parameters())):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        # The ranks' returned losses average to the global loss (each alone is its share times the world size).
        mean = (ranks[0][step]["returned"] + ranks[1][step]["returned"]) / 2
        torch.testing.assert_close(mean, loss.detach(), atol=1e-5, rtol=0)
        optimizer.step()
    assert torch.isnan(gdro.last.group_losses[1])  # the last step had no group 1: absent groups were exercised
