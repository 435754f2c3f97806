"""D&R as an epoch-end step for any loop (biasaudit/methods/dandr.py; methods.md section 8, issue 21 item 1): purity on
hand-made clusters, alpha from known purities, the soft re-initialisation on a tiny branch, the schedule, saving the
initial weights, and arguments refused before any weight moves."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from biasaudit.errors import ArgumentTypeError, InputError
from biasaudit.methods.dandr import DandR, purity, reinit_strength

# Two tight, far-apart clusters of five points each.
CLUSTERS = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [0.05, 0.05],
                         [5.0, 5.0], [5.1, 5.0], [5.0, 5.1], [5.1, 5.1], [5.05, 5.05]])
CLEAN = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])  # purity 1
MIXED = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])  # one stray label per cluster: purity 8/10


def test_purity_counts_the_samples_that_share_their_clusters_majority_label():
    assert purity(CLUSTERS, CLEAN, num_classes=2) == 1.0
    assert purity(CLUSTERS, MIXED, num_classes=2) == pytest.approx(0.8)
    assert purity(CLUSTERS, torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1]), num_classes=2) == pytest.approx(0.6)


def test_purity_does_not_change_when_a_feature_is_given_in_other_units():
    # Min-max scaling per column: a column 1000x larger (and shifted) must not take over the clustering.
    columns = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 3)
    labels = torch.tensor([0, 0, 1, 1] * 3)  # the label is column 0
    stretched = columns * torch.tensor([1.0, 1000.0]) + torch.tensor([0.0, 7.0])
    assert purity(columns, labels, num_classes=2) == purity(stretched, labels, num_classes=2) == 1.0


def test_alpha_is_tanh_of_three_times_the_purity_gap():
    assert reinit_strength(0.9, 0.7) == pytest.approx(math.tanh(0.6))
    assert reinit_strength(0.7, 0.9) == pytest.approx(math.tanh(0.6))
    assert reinit_strength(0.8, 0.8) == 0.0


def one_weight_branch(value: float) -> nn.Linear:
    branch = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        branch.weight.fill_(value)
    return branch


def test_a_branch_with_purity_gap_0_2_moves_tanh_0_6_of_the_way_back_to_its_initial_weights():
    branch, steady = one_weight_branch(1.0), one_weight_branch(-2.0)
    dandr = DandR({"image": branch, "text": steady}, every=1)
    with torch.no_grad():
        branch.weight.fill_(3.0)  # training moved it
        steady.weight.fill_(4.0)
    # image: purity 1.0 on train and 0.8 on val (d = 0.2); text's val rows swap the two strays back (d = 0).
    val = {"image": CLUSTERS, "text": CLUSTERS[[0, 1, 2, 3, 9, 5, 6, 7, 8, 4]]}
    step = dandr.epoch_end(0, {"image": CLUSTERS, "text": CLUSTERS}, CLEAN, val, MIXED)
    alpha = math.tanh(0.6)
    assert step.purity_train == {"image": 1.0, "text": 1.0} and step.purity_val["image"] == pytest.approx(0.8)
    assert step.alpha["image"] == pytest.approx(alpha) and step.alpha["text"] == 0.0 and dandr.last is step
    assert branch.weight.item() == pytest.approx(alpha * 1.0 + (1 - alpha) * 3.0, abs=1e-6)
    assert steady.weight.item() == 4.0


def test_reinitialisation_happens_after_every_rth_epoch_at_most_max_times():
    branch = one_weight_branch(0.0)
    dandr = DandR({"m": branch}, every=2, max_times=2)
    assert [dandr.due(e) for e in range(7)] == [False, True, False, True, False, True, False]
    features = {"m": CLUSTERS}
    with torch.no_grad():
        branch.weight.fill_(1.0)
    assert dandr.epoch_end(0) is None and branch.weight.item() == 1.0  # not due: no features needed, nothing moves
    for epoch in (1, 3):
        assert dandr.epoch_end(epoch, features, CLEAN, features, MIXED) is not None
    assert dandr.epoch_end(3, features, CLEAN, features, MIXED) is None  # once per epoch
    assert not dandr.due(5) and dandr.epoch_end(5, features, CLEAN, features, MIXED) is None and dandr.times == 2
    assert DandR({"m": branch}).every == 20 and DandR({"m": branch}).max_times == 3


def test_saved_initial_weights_load_into_a_new_dandr():
    first = one_weight_branch(1.0)
    dandr = DandR({"m": first}, every=1)
    saved = dandr.state_dict()
    other = one_weight_branch(5.0)
    resumed = DandR({"m": other}, every=1)
    resumed.load_state_dict(saved)
    resumed.epoch_end(0, {"m": CLUSTERS}, CLEAN, {"m": CLUSTERS}, MIXED)
    alpha = math.tanh(0.6)
    assert other.weight.item() == pytest.approx(alpha * 1.0 + (1 - alpha) * 5.0, abs=1e-6)  # back towards the saved 1.0
    with pytest.raises(InputError, match="does not hold the initial weights of branch 'm'"):
        DandR({"m": nn.Linear(2, 1)}).load_state_dict(saved)


@pytest.mark.parametrize("call, words", [
    (lambda d: d.epoch_end(0), r"DandR\.epoch_end is due at epoch 0 .* got no train features or labels"),
    (lambda d: d.epoch_end(0, {"x": CLUSTERS}, CLEAN, {"m": CLUSTERS}, CLEAN),
     r"'train_features' parameter of DandR\.epoch_end has keys \['x'\]; expected the branches' \['m'\]"),
    (lambda d: d.epoch_end(0, {"m": CLUSTERS}, CLEAN, {"m": CLUSTERS[0]}, CLEAN),
     r"'m' entry of the 'val_features' parameter of DandR\.epoch_end is a torch\.float32 tensor of shape \(2,\)"),
    (lambda d: d.epoch_end(0, {"m": CLUSTERS}, CLEAN[:4], {"m": CLUSTERS}, CLEAN),
     r"'train_labels' parameter of DandR\.epoch_end .* expected 10 integer labels"),
    (lambda d: d.epoch_end(0, {"m": CLUSTERS}, CLEAN, {"m": CLUSTERS[:1]}, CLEAN[:1]),
     r"'val_features' parameter of DandR\.epoch_end has 1 rows; expected at least one per class \(2\)"),
])
def test_bad_features_are_refused_in_one_sentence_before_any_weight_moves(call, words):
    branch = one_weight_branch(1.0)
    dandr = DandR({"m": branch}, every=1)
    with torch.no_grad():
        branch.weight.fill_(3.0)
    with pytest.raises(InputError, match=words):
        call(dandr)
    assert branch.weight.item() == 3.0 and dandr.times == 0 and dandr.last is None


def test_bad_branches_are_refused():
    shared = nn.Linear(1, 1)
    with pytest.raises(InputError, match="'branches' parameter of DandR .* share no parameter, but 'a' and 'b' share one"):
        DandR({"a": shared, "b": nn.Sequential(shared)})
    with pytest.raises(InputError, match="'branches' parameter of DandR .* at least one branch"):
        DandR({})
    with pytest.raises(ArgumentTypeError, match="'branches' parameter of DandR must be a mapping"):
        DandR([shared])
    with pytest.raises(InputError, match="'every' parameter of DandR"):
        DandR({"a": shared}, every=0)


def test_global_random_generators_are_untouched():
    branch = one_weight_branch(1.0)  # nn.Linear's own initialisation draws from torch's generator; D&R must not
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    dandr = DandR({"m": branch}, every=1)
    dandr.epoch_end(0, {"m": CLUSTERS}, CLEAN, {"m": CLUSTERS}, MIXED)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
