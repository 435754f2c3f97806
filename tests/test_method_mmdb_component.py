"""MMDB as a loss for any loop (issue 21, item 1; methods.md section 6): the margin table from counts, the loss by hand,
the captured classifier inputs, the inference logits, an export that predicts the same labels, a plain loop equal to
biasaudit's loop, and the argument checks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
from biasaudit.errors import ArgumentTypeError, InputError
from biasaudit.methods import MMDB, margin_table
from biasaudit.training.epoch_batches import shuffled_batches
from biasaudit.training.loop import train
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.methods import make_method

# Bias value 0: labels 0, 0, 0, 1 -> counts [3, 1, 0]; bias value 1: labels 2, 2 -> [0, 0, 2].
LABELS = np.array([0, 0, 0, 1, 2, 2])
BIAS = np.array([0, 0, 0, 0, 1, 1])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 5)
        self.classifier = nn.Linear(5, 3)

    def forward(self, x):
        return self.classifier(torch.tanh(self.body(x)))


def test_margins_are_one_minus_the_smoothed_label_frequency_under_each_bias_value():
    table = margin_table(torch.as_tensor(LABELS), BIAS, num_classes=3, num_bias=2)
    eps = 1e-6
    expected = [[1 - (3 + eps) / (4 + eps), 1 - (1 + eps) / (4 + eps), 1 - eps / (4 + eps)],
                [1 - eps / (2 + eps), 1 - eps / (2 + eps), 1 - (2 + eps) / (2 + eps)]]
    np.testing.assert_allclose(table.margins.numpy(), expected, atol=1e-7)
    assert table.counts.tolist() == [[3, 1, 0], [0, 0, 2]]


def test_the_loss_is_the_cross_entropy_of_scaled_cosines_minus_the_sample_margins():
    torch.manual_seed(0)
    model, x = Net(), torch.randn(6, 4)
    table = margin_table(LABELS, BIAS, num_classes=3, num_bias=2)
    mmdb = MMDB(model.classifier, table, scale=4.0)
    with mmdb.capture():
        model(x)
    features = torch.tanh(model.body(x))
    torch.testing.assert_close(mmdb.features, features)
    rows = model.classifier.weight / model.classifier.weight.norm(dim=1, keepdim=True)
    cosines = (features / features.norm(dim=1, keepdim=True)) @ rows.T
    y, k = torch.as_tensor(LABELS), torch.as_tensor(BIAS)
    by_hand = F.cross_entropy(4.0 * (cosines - table.margins[k]), y)
    loss = mmdb.loss(mmdb.features, y, k)
    torch.testing.assert_close(loss, by_hand)
    assert math.isclose(loss.item(), by_hand.item(), rel_tol=1e-6)
    torch.testing.assert_close(mmdb.inference_logits(features), 4.0 * cosines)
    loss.backward()
    assert model.classifier.bias.grad is None  # the cosine classifier has no bias
    assert model.body.weight.grad.abs().sum() > 0


def test_export_writes_normalised_rows_and_zero_bias_that_predict_the_same_labels():
    torch.manual_seed(1)
    model, x = Net(), torch.randn(500, 4) * torch.rand(500, 1) * 10
    with torch.no_grad():
        model.classifier.bias.normal_(0, 2.0)
        model.classifier.weight.mul_(torch.rand(3, 1) * 5)
    mmdb = MMDB(model.classifier, margin_table(LABELS, BIAS, num_classes=3, num_bias=2))
    with torch.no_grad(), mmdb.capture():
        before = model(x).argmax(1)
    wanted = mmdb.cosines(mmdb.features).argmax(1)
    assert (before != wanted).any()
    shipped = copy.deepcopy(model)
    mmdb.export(shipped.classifier)  # into another copy of the layer
    mmdb.export()
    for net in (model, shipped):
        with torch.no_grad():
            assert torch.equal(net(x).argmax(1), wanted)
        assert net.classifier.bias.abs().max().item() == 0.0
        torch.testing.assert_close(net.classifier.weight.norm(dim=1), torch.ones(3))


def test_a_plain_loop_with_mmdb_gives_the_weights_of_biasaudits_loop():
    adapter = DigitsCaptionsAdapter()
    baseline = train_baseline(adapter, seed=0, epochs=1)
    config = TrainConfig(epochs=1, seed=0, batch_size=128)
    ours = copy.deepcopy(baseline)
    train(ours, adapter, make_method("mmdb", scale=4.0, bias="key"), config=config)

    model = copy.deepcopy(baseline)
    train_rows = [b for b in adapter.data("train", batch_size=1024)]
    labels = np.concatenate([np.asarray(b[adapter.label_key]) for b in train_rows])
    bias = np.concatenate([np.asarray(b[adapter.bias_key]) for b in train_rows])
    mmdb = MMDB(model.classifier, margin_table(labels, bias, num_classes=10, num_bias=int(bias.max()) + 1), scale=4.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    model.train()
    for batch in shuffled_batches(adapter, config=config, epoch=0):
        optimizer.zero_grad()
        with mmdb.capture():
            model(*adapter.prepare(batch, device=torch.device("cpu")))
        mmdb.loss(mmdb.features, torch.as_tensor(batch[adapter.label_key]), torch.as_tensor(batch[adapter.bias_key])).backward()
        optimizer.step()
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=1e-6, rtol=0)


def test_mistakes_are_one_sentence_naming_the_argument():
    model = Net()
    table = margin_table(LABELS, BIAS, num_classes=3, num_bias=2)
    with pytest.raises(ArgumentTypeError, match="'classifier'"):
        MMDB(model, table)  # the model, not its final nn.Linear
    with pytest.raises(InputError, match="'margins'"):
        MMDB(model.classifier, torch.zeros(2, 4))
    with pytest.raises(InputError, match="'scale'"):
        MMDB(model.classifier, table, scale=0.0)
    mmdb = MMDB(model.classifier, table)
    with pytest.raises(InputError, match="features was read before any forward"):
        mmdb.features
    features, y = torch.randn(6, 5), torch.as_tensor(LABELS)
    with pytest.raises(InputError, match="'bias'.*holds 2"):
        mmdb.loss(features, y, torch.tensor([0, 1, 2, 0, 1, 0]))
    with pytest.raises(InputError, match="'features'"):
        mmdb.loss(torch.randn(6, 4), y, torch.as_tensor(BIAS))
    with pytest.raises(InputError, match="'labels'"):
        mmdb.loss(features, y[:3], torch.as_tensor(BIAS))
    with pytest.raises(InputError, match="'labels'.*from 0 to 2"):
        margin_table(np.array([0, 3]), np.array([0, 0]), num_classes=3, num_bias=1)
    with pytest.raises(InputError, match="'num_bias'"):
        margin_table(LABELS, BIAS, num_classes=3, num_bias=0)
    assert all(p.grad is None for p in model.parameters())
