"""Gradient conflict on tiny late-fusion models whose gradients are known by hand.

The model: a -> Linear(1, 1) and b -> Linear(1, 1) branches (weights 1), concat, dropout, a shared
Linear(2, 2) classifier with zero bias. Every sample of a batch has x_a = 1 and x_b = S, labels are
half 0, half 1, so with r = p - (0.5, 0.5) the single-modality gradients on the classifier are
  g_a: weight column a = r_a, column b = 0, bias r_a
  g_b: weight column a = 0, column b = S r_b, bias r_b.
The classifier columns are chosen so that both passes produce the logits (+-3, -+3): r_b = -+r_a.
Then cos(g_a, g_b) = -+1 / (sqrt(2) sqrt(1 + S^2)) and ||g_a|| / ||g_b|| = sqrt(2) / sqrt(1 + S^2).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from biasaudit.data.adapter import Adapter, Modality
from biasaudit.diagnostics.gradients import SeededSample, gradient_conflict


def seeded_batches(batches, *, k, seed):
    """What a scan's pass keeps of a whole split: SeededSample offered every batch in order."""
    sample = SeededSample(k=k, seed=seed)
    for ordinal, item in enumerate(batches):
        sample.offer(ordinal, item)
    return sample.chosen()

S = 2.0
BATCH_LABELS = [0, 1, 0, 1]


class LateFusion(nn.Module):
    def __init__(self, *, agree: bool, branch_bias: bool = False) -> None:
        super().__init__()
        self.branch_a = nn.Linear(1, 1, bias=branch_bias)
        self.branch_b = nn.Linear(1, 1, bias=branch_bias)
        self.dropout = nn.Dropout(0.5)
        self.classifier = nn.Linear(2, 2)
        with torch.no_grad():
            self.branch_a.weight.fill_(1.0)
            self.branch_b.weight.fill_(1.0)
            if branch_bias:
                self.branch_a.bias.fill_(0.5)
                self.branch_b.bias.fill_(-0.25)
            # a alone pushes towards class 1; b alone towards class 1 too (agree) or class 0 (conflict).
            sign_b = 1.0 if agree else -1.0
            self.classifier.weight.copy_(torch.tensor([[-3.0, -sign_b * 3.0 / S], [3.0, sign_b * 3.0 / S]]))
            self.classifier.bias.zero_()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([self.branch_a(a), self.branch_b(b)], dim=1)
        return self.classifier(self.dropout(fused))


class SeparateHeads(nn.Module):
    """Each modality has its own bias-free head; the logits are summed: nothing is shared."""

    def __init__(self) -> None:
        super().__init__()
        self.head_a = nn.Linear(1, 2, bias=False)
        self.head_b = nn.Linear(1, 2, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head_a(a) + self.head_b(b)


class TwoTensorAdapter(Adapter):
    modalities = (Modality("a", "tensor"), Modality("b", "tensor"))
    num_classes = 2

    def __init__(self, *, name_branches: bool = False) -> None:
        self.name_branches = name_branches

    def build_model(self) -> nn.Module:
        return LateFusion(agree=False)

    def data(self, split: str, *, batch_size: int):
        raise NotImplementedError  # the tests hand batches in directly

    def prepare(self, batch, *, device):
        return batch["a"].to(device), batch["b"].to(device)

    def branches(self, model):
        return {"a": model.branch_a, "b": model.branch_b} if self.name_branches else None


def _batches(n: int):
    for k in range(n):
        size = len(BATCH_LABELS)
        yield np.arange(k * size, (k + 1) * size), {
            "a": torch.ones(size, 1), "b": torch.full((size, 1), S), "label": torch.tensor(BATCH_LABELS)}


def _run(model: nn.Module, adapter: Adapter | None = None, *, n: int = 3, max_batches: int = 8):
    return gradient_conflict(model, adapter or TwoTensorAdapter(), seeded_batches(_batches(n), k=max_batches, seed=0), device="cpu", seed=0)


EXPECTED_COS = 1.0 / (math.sqrt(2.0) * math.sqrt(1.0 + S * S))
EXPECTED_RATIO = math.sqrt(2.0) / math.sqrt(1.0 + S * S)


def test_branches_pulling_the_classifier_apart_give_the_hand_computed_negative_cosine():
    result = _run(LateFusion(agree=False)).to_dict()
    assert result["available"] and result["n_batches"] == 3
    (pair,) = result["pairs"]
    assert (pair["a"], pair["b"]) == ("a", "b")
    assert pair["cosines"] == pytest.approx([-EXPECTED_COS] * 3, abs=1e-9)
    assert pair["norm_ratios"] == pytest.approx([EXPECTED_RATIO] * 3, abs=1e-9)
    assert pair["fraction_negative"] == 1.0
    assert pair["mean_cosine"] == pytest.approx(-EXPECTED_COS, abs=1e-9)
    edges, counts = pair["histogram"]["edges"], pair["histogram"]["counts"]
    assert len(edges) == 21 and edges[0] == -1.0 and edges[-1] == 1.0
    assert counts[int((1.0 - EXPECTED_COS) / 0.1)] == 3 and sum(counts) == 3  # -0.316 lies in [-0.4, -0.3)
    # Bias-free branches get no gradient when muted, so only the classifier is shared.
    assert result["shared_parameter_names"] == ["classifier.weight", "classifier.bias"]
    assert result["n_shared_parameters"] == 6


def test_branches_that_agree_give_the_hand_computed_positive_cosine():
    (pair,) = _run(LateFusion(agree=True)).to_dict()["pairs"]
    assert pair["cosines"] == pytest.approx([EXPECTED_COS] * 3, abs=1e-9)
    assert pair["fraction_negative"] == 0.0


def test_max_batches_bounds_the_sample():
    result = _run(LateFusion(agree=False), n=5, max_batches=2)
    assert result.n_batches == 2 and len(result.pairs[0].cosines) == 2


def test_adapter_branches_keep_branch_biases_out_of_the_shared_set():
    """A muted branch still feeds its bias forward; without the hook that bias looks shared."""
    automatic = _run(LateFusion(agree=False, branch_bias=True))
    assert "branch_a.bias" in automatic.shared_parameter_names and automatic.shared_rule == "automatic"
    named = _run(LateFusion(agree=False, branch_bias=True), TwoTensorAdapter(name_branches=True))
    assert named.shared_parameter_names == ("classifier.weight", "classifier.bias")
    assert "branches" in named.shared_rule


def test_frozen_parameters_are_never_shared():
    model = LateFusion(agree=False)
    model.classifier.bias.requires_grad_(False)
    result = _run(model)
    assert result.shared_parameter_names == ("classifier.weight",) and result.n_shared_parameters == 4


def test_model_without_shared_parameters_reports_unavailable_instead_of_crashing():
    result = _run(SeparateHeads()).to_dict()
    assert result["available"] is False
    assert "shared" in result["note"] and result["pairs"] == []


def test_no_batches_reports_unavailable():
    result = gradient_conflict(LateFusion(agree=False), TwoTensorAdapter(), seeded_batches(iter(()), k=8, seed=0), device="cpu")
    assert not result.available and "No batches" in result.note


def test_weights_grads_and_train_mode_are_left_as_they_were():
    """A scan must never alter the user's model; dropout must be off while measuring."""
    model = LateFusion(agree=False)
    model.train()
    model.dropout.eval()  # a mixed state must be restored module by module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    first = _run(model)
    second = _run(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    assert all(p.grad is None for p in model.parameters())
    assert model.training and model.classifier.training and not model.dropout.training
    # With dropout active the cosines would be random and differ from the closed form.
    model.dropout.train()
    third = _run(model)
    assert model.dropout.training
    for result in (first, second, third):
        assert result.pairs[0].cosines == pytest.approx((-EXPECTED_COS,) * 3, abs=1e-9)


def test_gradient_batches_are_a_seeded_sample_of_the_whole_split_not_its_first_batches():
    """A loader sorted by label would give k batches of its first labels; the sample spans the split and follows the seed."""

    batches = [(np.arange(i * 4, i * 4 + 4), {"batch": i}) for i in range(40)]
    first = [ordinal for ordinal, _ in seeded_batches(iter(batches), k=8, seed=0)]
    assert len(first) == 8 and first == sorted(first) and first != list(range(8)) and max(first) >= 20
    assert first == [ordinal for ordinal, _ in seeded_batches(iter(batches), k=8, seed=0)]
    assert first != [ordinal for ordinal, _ in seeded_batches(iter(batches), k=8, seed=1)]
    assert [ordinal for ordinal, _ in seeded_batches(iter(batches[:5]), k=8, seed=0)] == [0, 1, 2, 3, 4]
