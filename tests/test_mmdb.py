"""MMDB math (methods.md section 6): margins, loss, scale bound, bias-balanced accuracy, and the production method's
cosine logits and export on a model whose classifier input is set by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit import Adapter, Modality
from biasaudit.errors import DataError, InputError
from biasaudit.training.mmdb import (
    SCALE_GRID,
    bias_balanced_accuracy,
    bias_margins,
    check_scale,
    inference_logits,
    mmdb_logits,
    mmdb_loss,
    scale_lower_bound,
    typical_scale_bound,
)
from biasaudit.training.method_mmdb import MMDB

# Bias value 0: labels 0, 0, 0, 1 -> counts [3, 1, 0]; bias value 1: labels 2, 2 -> [0, 0, 2];
# bias value 2: labels 0, 1 -> [1, 1, 0] (label entropy exactly 1 bit); bias value 3: never seen.
LABELS = np.array([0, 0, 0, 1, 2, 2, 0, 1])
BIAS = np.array([0, 0, 0, 0, 1, 1, 2, 2])


def table(**options):
    return bias_margins(LABELS, BIAS, num_classes=3, num_bias=4, **options)


def test_margins_are_one_minus_smoothed_frequencies():
    """Wrong margins (e.g. eps only in the numerator, or per-class instead of per-bias normalising) show here."""
    eps = 1e-6
    result = table(eps=eps)
    assert result.counts.tolist() == [[3, 1, 0], [0, 0, 2], [1, 1, 0], [0, 0, 0]]
    expected_n_bar = np.array([
        [(3 + eps) / (4 + eps), (1 + eps) / (4 + eps), eps / (4 + eps)],
        [eps / (2 + eps), eps / (2 + eps), (2 + eps) / (2 + eps)],
        [(1 + eps) / (2 + eps), (1 + eps) / (2 + eps), eps / (2 + eps)],
        [1.0, 1.0, 1.0],  # unseen bias value: eps / eps = 1 for every class
    ])
    np.testing.assert_allclose(result.frequencies, expected_n_bar, rtol=1e-12)
    np.testing.assert_allclose(result.margins.numpy(), 1 - expected_n_bar, atol=1e-7)
    np.testing.assert_allclose(result.margins[0].numpy(), [0.25, 0.75, 1.0], atol=1e-6)
    assert result.margins.dtype == torch.float32 and tuple(result.margins.shape) == (4, 3)
    assert result.margins[3].tolist() == [0.0, 0.0, 0.0]


def test_a_large_eps_visibly_smooths_the_frequencies():
    """eps must enter both numerator and denominator: with eps = 0.5, n̄ of bias value 0 is [3.5, 1.5, 0.5] / 4.5."""
    result = table(eps=0.5)
    np.testing.assert_allclose(result.frequencies[0], [3.5 / 4.5, 1.5 / 4.5, 0.5 / 4.5], rtol=1e-12)


def test_min_count_ignores_rare_labels_but_keeps_raw_counts():
    """With min_count=2 the single label-1 sample under bias value 0 is ignored: its margin becomes ~1."""
    eps = 1e-6
    result = table(min_count=2)
    np.testing.assert_allclose(result.frequencies[0], [1.0, eps / (3 + eps), eps / (3 + eps)], rtol=1e-12)
    np.testing.assert_allclose(result.margins[0].numpy(), [0.0, 1.0, 1.0], atol=1e-6)
    # Bias value 2 has only singletons: everything ignored, so it behaves like an unseen bias value.
    assert result.margins[2].tolist() == [0.0, 0.0, 0.0]
    assert result.counts[0].tolist() == [3, 1, 0]  # the record keeps what the data held
    assert result.min_count == 2


def test_entropy_gate_zeroes_high_entropy_bias_values():
    """Entropies (bits): [3,1] -> 0.811, [0,0,2] -> 0, [1,1] -> exactly 1; the gate is inclusive (>=)."""
    result = table(entropy_gate=1.0)
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    np.testing.assert_allclose(result.entropy_bits, [h, 0.0, 1.0, 0.0], atol=1e-12)
    assert result.gated.tolist() == [False, False, True, False]
    assert result.margins[2].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(result.margins[0].numpy(), [0.25, 0.75, 1.0], atol=1e-6)  # untouched
    stricter = table(entropy_gate=0.8)
    assert stricter.gated.tolist() == [True, False, True, False]
    assert table().gated.tolist() == [False, False, False, False]


def test_margin_table_records_as_json():
    """The result file must be able to record the table and its settings."""
    record = table(min_count=1, entropy_gate=1.0).to_dict()
    text = json.dumps(record, allow_nan=False)
    back = json.loads(text)
    assert back["counts"][0] == [3, 1, 0]
    assert back["gated_bias_values"] == [2]
    assert (back["eps"], back["min_count"], back["entropy_gate"]) == (1e-6, 1, 1.0)
    assert back["margins"][0] == pytest.approx([0.25, 0.75, 1.0], abs=1e-6)


def test_bad_training_data_is_rejected():
    """A label outside the declared classes, or mismatched lengths, must raise a DataError, not index garbage."""
    with pytest.raises(DataError, match="training labels"):
        bias_margins(np.array([0, 3]), np.array([0, 0]), num_classes=3, num_bias=1)
    with pytest.raises(DataError, match="as many"):
        bias_margins(np.array([0, 1]), np.array([0]), num_classes=3, num_bias=1)
    with pytest.raises(DataError, match="integers"):
        bias_margins(np.array([0.0, 1.0]), np.array([0, 0]), num_classes=3, num_bias=1)


MARGINS = torch.tensor([[0.25, 0.75, 1.0], [1.0, 1.0, 0.0]])
COSINES = torch.tensor([[0.5, 0.1, -0.2], [0.0, 0.3, 0.6]])
SAMPLE_BIAS = torch.tensor([0, 1])
SAMPLE_LABELS = torch.tensor([1, 2])


def test_mmdb_loss_matches_hand_computation():
    """Margins must shift EVERY class's logit, scaled by s (a margin only on the true class gives another number).

    s = 2. Sample A (bias 0, label 1): z = 2·([0.5, 0.1, -0.2] − [0.25, 0.75, 1.0]) = [0.5, -1.3, -2.4],
    CE = 1.3 + ln(e^0.5 + e^-1.3 + e^-2.4) = 1.99911. Sample B (bias 1, label 2):
    z = 2·([0, 0.3, 0.6] − [1, 1, 0]) = [-2, -1.4, 1.2], CE = -1.2 + ln(e^-2 + e^-1.4 + e^1.2) = 0.10889.
    Mean 1.05400.
    """
    logits = mmdb_logits(COSINES, SAMPLE_BIAS, MARGINS, scale=2.0)
    np.testing.assert_allclose(logits.numpy(), [[0.5, -1.3, -2.4], [-2.0, -1.4, 1.2]], atol=1e-6)
    a = 1.3 + math.log(math.exp(0.5) + math.exp(-1.3) + math.exp(-2.4))
    b = -1.2 + math.log(math.exp(-2.0) + math.exp(-1.4) + math.exp(1.2))
    loss = mmdb_loss(COSINES, SAMPLE_LABELS, SAMPLE_BIAS, MARGINS, scale=2.0)
    assert loss.item() == pytest.approx((a + b) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(1.0540007, abs=1e-6)


def test_soft_targets_give_the_weighted_cross_entropy():
    """One-hot soft targets must equal hard labels; a 50/50 target must average the two per-label losses."""
    one_hot = F.one_hot(SAMPLE_LABELS, 3).float()
    hard = mmdb_loss(COSINES, SAMPLE_LABELS, SAMPLE_BIAS, MARGINS, scale=2.0)
    assert mmdb_loss(COSINES, one_hot, SAMPLE_BIAS, MARGINS, scale=2.0).item() == pytest.approx(hard.item(), abs=1e-6)
    half = torch.tensor([[0.5, 0.5, 0.0]])
    mixed = mmdb_loss(COSINES[:1], half, SAMPLE_BIAS[:1], MARGINS, scale=2.0).item()
    ce0 = -0.5 + math.log(math.exp(0.5) + math.exp(-1.3) + math.exp(-2.4))
    ce1 = 1.3 + math.log(math.exp(0.5) + math.exp(-1.3) + math.exp(-2.4))
    assert mixed == pytest.approx((ce0 + ce1) / 2, abs=1e-6)


def test_mmdb_equals_logit_adjustment_by_scaled_frequencies():
    """−s·m = −s + s·n̄ and the constant cancels: the loss must equal CE(s·cos + s·n̄) (methods.md 6)."""
    generator = torch.Generator().manual_seed(0)
    labels = np.array([0] * 40 + [1] * 3 + [2] * 1 + [1] * 30 + [2] * 5 + [2] * 20)
    bias = np.array([0] * 44 + [1] * 35 + [2] * 20)
    margin_table = bias_margins(labels, bias, num_classes=3, num_bias=3)
    cosines = torch.rand(64, 3, generator=generator, dtype=torch.float64) * 2 - 1
    sample_bias = torch.randint(0, 3, (64,), generator=generator)
    targets = torch.randint(0, 3, (64,), generator=generator)
    scale = 4.0
    mmdb = mmdb_loss(cosines, targets, sample_bias, margin_table.margins, scale=scale)
    prior = torch.tensor(margin_table.frequencies)[sample_bias]
    adjusted = F.cross_entropy(scale * cosines + scale * prior, targets)
    assert mmdb.item() == pytest.approx(adjusted.item(), abs=1e-6)
    plain = F.cross_entropy(scale * cosines, targets)
    assert abs(mmdb.item() - plain.item()) > 1e-2  # the margins do change the loss here


def test_inference_logits_use_no_margin():
    """At test time the bias value is unknown: logits must be s·cos θ only."""
    np.testing.assert_allclose(inference_logits(COSINES, scale=4.0).numpy(), [[2.0, 0.4, -0.8], [0.0, 1.2, 2.4]], atol=1e-6)


def test_bias_value_outside_the_table_is_a_data_error():
    """A batch bias value the training split never declared must fail clearly."""
    with pytest.raises(DataError, match="Bias values"):
        mmdb_logits(COSINES, torch.tensor([0, 2]), MARGINS, scale=2.0)


class FeatureThrough(nn.Module):
    """The classifier reads the two inputs concatenated: its input is whatever the test puts in a and b."""

    def __init__(self, width: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.classifier = nn.Linear(width, classes)

    def forward(self, a, b):
        return self.classifier(torch.cat([a, b], dim=1))


class FeatureAdapter(Adapter):
    modalities = [Modality("a", "tensor"), Modality("b", "tensor")]
    num_classes = 3
    bias_key = "k"

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    def build_model(self):
        return FeatureThrough(self.features.shape[1])

    def data(self, split, *, batch_size):
        n, half = len(self.features), self.features.shape[1] // 2
        yield {"a": self.features[:, :half], "b": self.features[:, half:], "label": torch.arange(n) % 3, "k": torch.arange(n) % 2}

    def prepare(self, batch, *, device):
        return batch["a"], batch["b"]

    def classifier(self, model):
        return model.classifier


def prepared_mmdb(model, adapter) -> MMDB:
    method = MMDB(scale=4.0)
    method.prepare(model, adapter, device=torch.device("cpu"))
    return method


def test_mmdb_cosines_are_the_hand_cosines_and_zero_rows_or_features_give_zero_not_nan():
    """Rows [3,4] and [0,2] normalise to [0.6,0.8] and [0,1]; a zero row or zero feature gives 0, not NaN."""
    features = torch.tensor([[1.0, 0.0], [0.0, 5.0], [0.0, 0.0], [-2.0, 0.0]])
    adapter = FeatureAdapter(features)
    model = adapter.build_model()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0]]))
        model.classifier.bias.fill_(5.0)  # the cosine classifier has no bias
    method = prepared_mmdb(model, adapter)
    cosines = method.cosines(model, adapter, next(iter(adapter.data("train", batch_size=4))), device=torch.device("cpu"))
    expected = [[0.6, 0.0, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 0.0], [-0.6, 0.0, 0.0]]
    np.testing.assert_allclose(cosines.detach().numpy(), expected, atol=1e-6)


def test_export_preserves_argmax_in_the_original_linear():
    """After export the user's own linear must predict exactly the cosine classifier's labels, with zero bias."""
    torch.manual_seed(0)
    features = torch.randn(1000, 16) * torch.rand(1000, 1) * 10
    adapter = FeatureAdapter(features)
    model = FeatureThrough(16, 3)
    with torch.no_grad():
        model.classifier.bias.normal_(0, 2.0)
        model.classifier.weight.mul_(torch.rand(3, 1) * 5)  # unequal row norms, as after training
    method = prepared_mmdb(model, adapter)
    batch = next(iter(adapter.data("train", batch_size=1000)))
    with torch.no_grad():
        wanted = method.cosines(model, adapter, batch, device=torch.device("cpu")).argmax(dim=1)
        before = model(batch["a"], batch["b"]).argmax(dim=1)
        assert (before != wanted).any()  # otherwise this test could not fail
        method.export(model, adapter)
        after = model(batch["a"], batch["b"]).argmax(dim=1)
    assert torch.equal(after, wanted)
    assert model.classifier.bias.abs().max().item() == 0.0
    assert torch.allclose(model.classifier.weight.norm(dim=1), torch.ones(3), atol=1e-6)


def test_bias_balanced_accuracy_weighs_groups_equally():
    """Groups (0,0): 6/6 right; (1,0): 1/5 right; (1,1): 2 samples < min_group 5, ignored -> (100 + 20)/2 = 60.

    Plain accuracy would be 7/13 = 53.8, and counting the small group 40.
    """
    labels = np.array([0] * 6 + [1] * 5 + [1] * 2)
    bias = np.array([0] * 6 + [0] * 5 + [1] * 2)
    predictions = np.array([0] * 6 + [1, 0, 0, 0, 0] + [0, 0])
    assert bias_balanced_accuracy(predictions, labels, bias) == pytest.approx(60.0)
    assert bias_balanced_accuracy(predictions, labels, bias, min_group=2) == pytest.approx(40.0)
    with pytest.raises(DataError, match="min_group"):
        bias_balanced_accuracy(predictions, labels, bias, min_group=7)


def test_scale_lower_bound_follows_eq8_as_written():
    """Row [0.2, 0.5, 0.8], class 0, P = 0.9: ln(1/9)/(0.2 + (0.5+0.8)/2 − 2) = −2.19722/−1.15 = 1.91063 (> 0)."""
    assert scale_lower_bound(np.array([0.2, 0.5, 0.8]), 0) == pytest.approx(1.9106301, rel=1e-6)
    assert scale_lower_bound(np.array([0.2, 0.5, 0.8]), 0, target_probability=0.5) == 0.0
    assert scale_lower_bound(np.array([1.0, 1.0, 1.0]), 1) == math.inf


def test_check_scale_warns_for_small_s_on_a_strongly_biased_table():
    """Ten classes, each bias value k holds 91 samples of label k and one of every other label.

    Every (i, k) pair is seen, 90 of the 100 are bias-conflicting with m = 1 − 1/100 = 0.99, so the
    median pair is a conflicting one: bound = ln(1/9)/(0.99 + (0.09 + 8·0.99)/9 − 2) = 18.31.
    Hence s = 1 and s = 16 warn, s = 32 (the released code's value) does not.
    """
    labels, bias = [], []
    for k in range(10):
        for i in range(10):
            count = 91 if i == k else 1
            labels += [i] * count
            bias += [k] * count
    margin_table = bias_margins(np.array(labels), np.array(bias), num_classes=10, num_bias=10)
    conflicting = math.log(1 / 0.9 - 1) / (0.99 + (0.09 + 8 * 0.99) / 9 - 2)
    assert typical_scale_bound(margin_table) == pytest.approx(conflicting, rel=1e-4)
    assert conflicting == pytest.approx(18.31, abs=0.01)
    warning = check_scale(1, margin_table)
    assert warning is not None and "s=1 " in warning and "18.3" in warning
    assert check_scale(16, margin_table) is not None
    assert check_scale(32, margin_table) is None
    assert SCALE_GRID == (1, 2, 4, 8, 16, 32)
    with pytest.raises(InputError, match="scale"):
        check_scale(0, margin_table)


def test_check_scale_is_quiet_when_bias_values_own_their_class():
    """Each bias value holds one label only: every seen pair has m_i = 0 and m_j = 1,
    so the bound is ln(1/9)/(0 + 1 − 2) = ln 9 ≈ 2.20: s = 4 passes, s = 2 warns.
    """
    margin_table = bias_margins(np.array([0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2]), num_classes=3, num_bias=3)
    assert typical_scale_bound(margin_table) == pytest.approx(math.log(9), rel=1e-4)
    assert check_scale(4, margin_table) is None
    assert check_scale(2, margin_table) is not None
