"""JTT as parts for any loop (biasaudit/methods/jtt.py; methods.md section 8, issue 21 item 1): the stage-1 error set,
the stage-2 weights and weighted-mean loss against hand computations, saving and loading E, arguments refused before
any record, and under two gloo processes the union of the ranks' error sets and the global-batch gradient."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biasaudit.errors import ArgumentTypeError, InputError
from biasaudit.methods.jtt import JTT

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import method_ddp  # noqa: E402

sys.path.pop(0)

# Rows 0..4 of a stage-1 pass: argmax 0, 1, 0, 1, 1 against labels 0, 0, 1, 1, 0: samples 11, 12 and 14 are wrong.
INDICES = torch.tensor([10, 11, 12, 13, 14])
LOGITS = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, -1.0], [0.5, 0.7], [-1.0, 1.0]])
LABELS = torch.tensor([0, 0, 1, 1, 0])


def finished(**options) -> JTT:
    jtt = JTT(**options)
    jtt.record(INDICES[:2], LOGITS[:2], LABELS[:2])
    jtt.record(INDICES[2:], LOGITS[2:], LABELS[2:])
    jtt.finish()
    return jtt


def test_the_error_set_is_the_samples_stage_one_misclassifies():
    errors = finished().error_set
    assert errors.indices.tolist() == [11, 12, 14] and errors.recorded == 5 and errors.error_rate == pytest.approx(0.6)


def test_a_sample_recorded_twice_is_in_the_error_set_when_either_record_was_wrong():
    jtt = JTT()
    jtt.record(torch.tensor([3, 4]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 0]))
    jtt.record(torch.tensor([3]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    errors = jtt.finish()
    assert errors.indices.tolist() == [3] and errors.recorded == 2


def test_error_set_samples_weigh_upweight_times_the_others():
    jtt = finished(upweight=10.0)
    assert jtt.weights(torch.tensor([14, 10, 11, 99])).tolist() == [10.0, 1.0, 10.0, 1.0]
    assert jtt.weights(torch.tensor([-1, 0, 15])).tolist() == [1.0, 1.0, 1.0]  # outside E's range: weight 1
    with pytest.raises(ArgumentTypeError, match="'indices' parameter of JTT.loss must be a torch.Tensor; got list"):
        jtt.loss(torch.ones(2, requires_grad=True), [1, 2])


def test_the_stage_two_loss_is_the_weighted_mean_of_the_batch():
    jtt = finished(upweight=4.0)
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    loss = jtt.loss(losses, torch.tensor([10, 11, 12]))  # weights 1, 4, 4
    assert loss.item() == pytest.approx((1 * 1 + 4 * 2 + 4 * 3) / 9)
    loss.backward()
    assert losses.grad.tolist() == pytest.approx([1 / 9, 4 / 9, 4 / 9])


def test_stage_one_lasts_half_the_epochs_by_default():
    jtt = JTT()
    assert [jtt.stage_one_epochs(e) for e in (1, 2, 3, 10)] == [1, 1, 2, 5]
    assert JTT(fraction=0.2).stage_one_epochs(4) == 1
    with pytest.raises(InputError, match="'fraction' parameter of JTT"):
        JTT(fraction=1.5)


def test_weights_before_the_error_set_is_fixed_say_what_to_call():
    jtt = JTT()
    jtt.record(INDICES, LOGITS, LABELS)
    with pytest.raises(InputError, match=r"JTT\.weights needs the error set, which is not fixed yet; call JTT\.record .* JTT\.finish\(\)"):
        jtt.weights(INDICES)
    with pytest.raises(InputError, match="JTT.loss needs the error set"):
        jtt.loss(torch.ones(5, requires_grad=True), INDICES)
    jtt.finish()
    with pytest.raises(InputError, match=r"JTT\.record was called after JTT\.finish\(\)"):
        jtt.record(INDICES, LOGITS, LABELS)
    with pytest.raises(InputError, match="before any JTT.record"):
        JTT().finish()


@pytest.mark.parametrize("args, words", [
    ((INDICES, LOGITS[:4], LABELS), r"'logits' parameter of JTT\.record .* expected float logits of shape \[5, number of classes\]"),
    ((INDICES, LOGITS, LABELS.float()), r"'labels' parameter of JTT\.record .* expected 5 integer labels"),
    ((INDICES.float(), LOGITS, LABELS), r"'indices' parameter of JTT\.record is a torch\.float32 tensor"),
    ((INDICES - 11, LOGITS, LABELS), r"'indices' parameter of JTT\.record holds -1; expected dataset indices of at least 0"),
])
def test_a_bad_record_is_refused_in_one_sentence_and_records_nothing(args, words):
    jtt = JTT()
    with pytest.raises(InputError, match=words):
        jtt.record(*args)
    assert jtt.state_dict()["seen"].numel() == 0


def test_the_loss_refuses_losses_that_cannot_train_or_do_not_match_the_indices():
    jtt = finished()
    with pytest.raises(InputError, match="'per_sample_losses' parameter of JTT.loss does not require grad"):
        jtt.loss(torch.ones(2), torch.tensor([1, 2]))
    with pytest.raises(InputError, match="'indices' parameter of JTT.loss has 3 values and 'per_sample_losses' 2"):
        jtt.loss(torch.ones(2, requires_grad=True), torch.tensor([1, 2, 3]))


def test_a_saved_error_set_loads_into_a_new_jtt_and_so_does_a_half_recorded_one():
    done = finished()
    again = JTT()
    again.load_state_dict(done.state_dict())
    assert again.error_set.indices.tolist() == [11, 12, 14] and again.error_set.recorded == 5
    assert torch.equal(again.weights(INDICES), done.weights(INDICES))

    half = JTT()
    half.record(INDICES[:2], LOGITS[:2], LABELS[:2])
    resumed = JTT()
    resumed.load_state_dict(half.state_dict())
    resumed.record(INDICES[2:], LOGITS[2:], LABELS[2:])
    assert resumed.finish().indices.tolist() == [11, 12, 14]
    with pytest.raises(InputError, match="'state_dict' parameter of JTT.load_state_dict has keys"):
        JTT().load_state_dict({"wrong": torch.tensor([1])})


def test_global_random_generators_are_untouched():
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    jtt = finished()
    jtt.loss(torch.ones(5, requires_grad=True), INDICES).backward()
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))


# ---- DDP: the ranks' error sets unite and the weighted mean is the global batch's ---------------------------------
def test_two_ddp_processes_share_one_error_set_and_the_global_batch_gradient(tmp_path, gloo_ranks):
    generator = torch.Generator().manual_seed(3)
    state = {"weight": torch.randn(3, 4, generator=generator), "bias": torch.randn(3, generator=generator)}
    x, y = torch.randn(9, 4, generator=generator), torch.randint(0, 3, (9,), generator=generator)
    indices = torch.arange(100, 109)
    ranks = method_ddp.on_two_ranks(gloo_ranks, tmp_path, "jtt", {"state": state, "x": x, "y": y, "indices": indices, "split": 6})

    model = torch.nn.Linear(4, 3)
    model.load_state_dict(state)
    jtt = JTT(upweight=5.0)
    with torch.no_grad():
        jtt.record(indices, model(x), y)
    errors = jtt.finish()
    # Both ranks hold errors (rank 0 rows 100-105, rank 1 rows 106-108) and correct samples: the union and both weights matter.
    assert errors.indices.tolist() == [101, 102, 105, 107]
    jtt.loss(F.cross_entropy(model(x), y, reduction="none"), indices).backward()
    for rank in ranks:
        assert rank["errors"].tolist() == errors.indices.tolist() and rank["recorded"] == 9
        for got, want in zip(rank["grads"], (p.grad for p in model.parameters())):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
