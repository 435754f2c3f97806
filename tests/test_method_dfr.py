"""DFR (methods.md section 8) as a post-hoc component: refit of a model's final nn.Linear on group-balanced features."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

import biasaudit.methods.dfr as dfr_module
from biasaudit.errors import ArgumentTypeError, InputError
from biasaudit.methods.dfr import DFR
from biasaudit.methods.dfr_data import classifier_inputs, holdout_indices


def gaussian_classes(n: int, *, classes: int = 4, dim: int = 16, seed: int = 0, bias_values: int = 2,
                     spread: float = 4.0):
    """Isotropic unit-variance Gaussians around class means: the Bayes classifier is linear, W = means,
    b = -|mean|^2 / 2. Labels are that classifier's own predictions, so the data are separable by a known layer."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim))
    means *= spread / np.linalg.norm(means, axis=1, keepdims=True)
    true_w, true_b = means, -0.5 * (means ** 2).sum(axis=1)
    x = means[rng.integers(0, classes, n)] + rng.normal(size=(n, dim))
    y = (x @ true_w.T + true_b).argmax(axis=1)
    bias = rng.integers(0, bias_values, n)
    return x.astype(np.float32), y, y * bias_values + bias, (true_w, true_b)


class Head(nn.Module):
    """A frozen 'backbone' (identity) under a final nn.Linear."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.backbone = nn.Identity()
        self.classifier = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.backbone(x))


def centred(w: np.ndarray) -> np.ndarray:
    return w - w.mean(axis=0)  # softmax ignores a vector added to every row


def test_dfr_recovers_a_known_linear_layer_on_separable_features():
    x, y, g, (true_w, _) = gaussian_classes(5000, seed=1)
    x, y, g, test_x, test_y = x[:3000], y[:3000], g[:3000], x[3000:], y[3000:]  # fit on 3000, predict 2000 unseen
    model = Head(16, 4)
    result = DFR(seed=0).fit(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(g))
    result.write_into(model.classifier)
    with torch.no_grad():
        predicted = model(torch.from_numpy(test_x)).argmax(dim=1).numpy()
    assert (predicted == test_y).mean() >= 0.99
    learned, truth = centred(result.weight), centred(true_w)
    for k in range(4):
        cosine = learned[k] @ truth[k] / np.linalg.norm(learned[k]) / np.linalg.norm(truth[k])
        assert cosine > 0.9, (k, cosine)


def test_two_classes_are_written_as_two_logits_with_sklearns_probabilities():
    x, y, g, _ = gaussian_classes(800, classes=2, dim=6, seed=3, spread=1.5)
    keep = np.concatenate([np.flatnonzero(g == k)[:150] for k in range(4)])  # balanced: the one subset is all rows
    x, y, g = x[keep], y[keep], g[keep]
    result = DFR(c_grid=(1.0,), subsets=1).fit(x, y, g)
    layer = nn.Linear(6, 2).double()
    result.write_into(layer)
    probabilities = torch.softmax(layer(torch.from_numpy(x).double()), dim=1).detach().numpy()
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(StandardScaler().fit_transform(x.astype(np.float64)), y)
    expected = reference.predict_proba(StandardScaler().fit_transform(x.astype(np.float64)))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_each_fit_sees_equally_many_samples_of_every_group(monkeypatch):
    # One group per class (a single bias value), so the class counts a fit sees are its group counts.
    x, y, _, _ = gaussian_classes(4000, seed=2)
    sizes = {0: 40, 1: 10, 2: 25, 3: 60}
    keep = np.concatenate([np.flatnonzero(y == k)[:n] for k, n in sizes.items()])
    x, y = x[keep], y[keep]
    seen: list[np.ndarray] = []

    class Spy(LogisticRegression):
        def fit(self, features, labels, sample_weight=None):
            seen.append(np.bincount(labels, minlength=4))
            return super().fit(features, labels, sample_weight)

    monkeypatch.setattr(dfr_module, "LogisticRegression", Spy)
    result = DFR(subsets=4, tune_subsets=2, c_grid=(0.3, 3.0)).fit(x, y, y)
    assert result.per_group == 10 and result.subset_size == 40
    assert result.group_sizes == (40, 10, 25, 60) and result.group_ids == (0, 1, 2, 3)
    assert len(seen) == 2 * 2 + 4  # tuning: 2 Cs x 2 subsets; final: 4 subsets
    tuning, final = seen[:4], seen[4:]
    assert all((counts == 5).all() for counts in tuning)  # half of the smallest group (10 // 2)
    assert all((counts == 10).all() for counts in final)


def test_balanced_groups_are_fitted_once_and_the_note_says_so(monkeypatch):
    x, y, _, _ = gaussian_classes(2000, classes=3, seed=4)
    keep = np.concatenate([np.flatnonzero(y == k)[:50] for k in range(3)])
    calls = []

    class Spy(LogisticRegression):
        def fit(self, features, labels, sample_weight=None):
            calls.append(len(labels))
            return super().fit(features, labels, sample_weight)

    monkeypatch.setattr(dfr_module, "LogisticRegression", Spy)
    result = DFR(c_grid=(1.0, 3.0)).fit(x[keep], y[keep], y[keep])
    assert calls == [75, 75, 150]  # one tuning fit per C on a half, one final fit on everything
    assert "fitted once" in result.note


def test_written_layer_on_raw_features_equals_sklearn_on_standardised_features():
    x, y, _, _ = gaussian_classes(3000, classes=3, dim=8, seed=5, spread=1.0)
    x = x * np.linspace(0.1, 50, 8, dtype=np.float32) + np.linspace(-20, 20, 8, dtype=np.float32)  # far from standard
    keep = np.concatenate([np.flatnonzero(y == k)[:200] for k in range(3)])  # balanced: the one subset is all rows
    x, y = x[keep], y[keep]
    result = DFR(c_grid=(1.0,), subsets=1).fit(x, y, y)
    layer = nn.Linear(8, 3).double()
    result.write_into(layer)
    written = layer(torch.from_numpy(x).double()).detach().numpy()
    scaled = StandardScaler().fit_transform(x.astype(np.float64))
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(scaled, y)
    np.testing.assert_allclose(written, reference.decision_function(scaled), atol=1e-5)
    np.testing.assert_allclose(written, result.logits(x), atol=1e-9)
    np.testing.assert_allclose(result.standardised_weight, reference.coef_, atol=1e-9)


def test_unbalanced_fit_folds_its_standardisation_into_the_layer():
    x, y, g, _ = gaussian_classes(1500, seed=6)
    x = x * 30 + 7
    result = DFR(subsets=3).fit(x, y, g)
    standardised = ((x - result.mean) / result.scale) @ result.standardised_weight.T + result.standardised_bias
    layer = nn.Linear(16, 4).double()
    result.write_into(layer)
    np.testing.assert_allclose(layer(torch.from_numpy(x).double()).detach().numpy(), standardised, atol=1e-8)


def correlated_noise(n: int, seed: int):
    """Class signal in x0 buried under shared noise that x1 measures: the right layer is x0 - x1, which a weak
    penalty finds, while a very strong one shrinks towards the class-mean direction (x0 alone) and fails."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    noise = rng.normal(scale=5.0, size=n)
    x = np.stack([np.where(y == 1, 1.0, -1.0) + noise + rng.normal(scale=0.05, size=n), noise], axis=1)
    return x, y, y * 2 + rng.integers(0, 2, n)


def test_the_chosen_c_is_the_one_with_the_best_worst_group_accuracy_on_the_tuning_half():
    x, y, g = correlated_noise(2000, seed=7)
    result = DFR(c_grid=(10.0, 1e-4)).fit(x, y, g)
    assert result.c_grid == (1e-4, 10.0)
    assert result.tuning_worst_group[1] > result.tuning_worst_group[0] + 0.2
    assert result.c == 10.0
    assert "C=10" in result.note


def test_tied_cs_go_to_the_stronger_regularisation():
    x, y, g, _ = gaussian_classes(1000, classes=3, seed=8, spread=12.0)  # every C classifies the tuning half perfectly
    result = DFR(c_grid=(3.0, 0.3, 1.0)).fit(x, y, g)
    assert result.tuning_worst_group == (1.0, 1.0, 1.0)
    assert result.c == 0.3


def test_same_seed_gives_the_same_weights_and_global_generators_are_untouched():
    x, y, g, _ = gaussian_classes(1200, seed=9, spread=2.0)
    model = Head(16, 4).train()
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    features = classifier_inputs(model, model.classifier, [(torch.from_numpy(x[i:i + 100]),) for i in range(0, 1200, 100)])
    first = DFR(seed=3).fit(features, y, g)
    second = DFR(seed=3).fit(features, y, g)
    other = DFR(seed=4).fit(features, y, g)
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(first.weight, second.weight) and np.array_equal(first.bias, second.bias)
    assert first.to_dict() == second.to_dict()
    assert not np.array_equal(first.weight, other.weight)


class TwoBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Dropout(0.5))
        self.text = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
        self.classifier = nn.Linear(6, 3)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([self.image(image), self.text(text)], dim=1))


def test_classifier_inputs_captures_the_fused_features_and_restores_training_mode():
    generator = torch.Generator().manual_seed(0)
    model = TwoBranch()
    model.train()
    model.text[1].eval()  # a mixed state (a frozen batch norm) must come back as it was
    image, text = torch.randn(10, 5, generator=generator), torch.randn(10, 3, generator=generator)
    before = {name: module.training for name, module in model.named_modules()}
    running_mean = model.text[1].running_mean.clone()
    tuples = classifier_inputs(model, model.classifier, [(image[:6], text[:6]), (image[6:], text[6:])])
    dicts = classifier_inputs(model, model.classifier, [{"image": image, "text": text}])
    loader = [(image[:4], text[:4], torch.zeros(4)), (image[4:], text[4:], torch.ones(6))]  # (inputs..., labels)
    called = classifier_inputs(model, model.classifier, loader, forward=lambda m, batch: m(batch[0], batch[1]))
    assert {name: module.training for name, module in model.named_modules()} == before
    assert torch.equal(model.text[1].running_mean, running_mean)  # eval mode: no batch-norm update
    assert not model.classifier._forward_pre_hooks
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model.image(image), model.text(text)], dim=1)
    assert tuples.shape == (10, 6) and tuples.dtype == torch.float32
    for captured in (tuples, dicts, called):
        torch.testing.assert_close(captured, expected)


def test_holdout_indices_are_a_seeded_fifth_of_train_and_the_result_names_its_split():
    first, again, other = holdout_indices(1000, seed=1), holdout_indices(1000, seed=1), holdout_indices(1000, seed=2)
    assert len(first) == 200 and np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.array_equal(first, np.unique(first)) and first.max() < 1000
    x, y, g, _ = gaussian_classes(1000, seed=10)
    result = DFR(subsets=2).fit(x[first], y[first], g[first], split="20% of train (seed 1)")
    assert result.split == "20% of train (seed 1)" and "20% of train (seed 1)" in result.note


# Errors: one sentence naming the argument, raised before anything is written.

def small_data():
    x, y, g, _ = gaussian_classes(400, classes=3, dim=5, seed=11)
    return x, y, g


@pytest.mark.parametrize("change, error, named", [
    (lambda x, y, g: (x, y[:-1], g), InputError, "labels"),
    (lambda x, y, g: (x, y, g[:-1]), InputError, "groups"),
    (lambda x, y, g: (x[:, 0], y, g), InputError, "features"),
    (lambda x, y, g: (x.tolist(), y, g), ArgumentTypeError, "features"),
    (lambda x, y, g: (np.where(np.arange(len(x))[:, None] == 3, np.nan, x), y, g), InputError, "features"),
    (lambda x, y, g: (x, y.astype(np.float32), g), ArgumentTypeError, "labels"),
    (lambda x, y, g: (x, np.where(y == 2, 0, y), g), InputError, "labels"),  # class 2 missing under num_classes=3
    (lambda x, y, g: (x, y, np.where(np.arange(len(g)) == 0, 99, g)), InputError, "groups"),  # a 1-sample group
    (lambda x, y, g: (x, y, np.zeros_like(g)), InputError, "groups"),  # one group holding every label
])
def test_bad_fit_inputs_are_named_in_one_sentence(change, error, named):
    features, labels, groups = change(*small_data())
    with pytest.raises(error) as caught:
        DFR(subsets=2).fit(features, labels, groups, num_classes=3)
    message = str(caught.value)
    assert named in message and message.count(". ") == 0 and message.endswith("."), message


def test_labels_out_of_range_are_refused():
    x, y, g = small_data()
    with pytest.raises(InputError, match="labels must lie in"):
        DFR().fit(x, y, g, num_classes=2)


@pytest.mark.parametrize("options, error, named", [
    ({"c_grid": ()}, InputError, "c_grid"),
    ({"c_grid": (1.0, -1.0)}, InputError, "c_grid"),
    ({"c_grid": 1.0}, ArgumentTypeError, "c_grid"),
    ({"subsets": 0}, InputError, "subsets"),
    ({"subsets": 2.5}, ArgumentTypeError, "subsets"),
    ({"seed": -1}, InputError, "seed"),
    ({"tune_subsets": True}, ArgumentTypeError, "tune_subsets"),
])
def test_bad_options_are_named(options, error, named):
    with pytest.raises(error, match=named):
        DFR(**options)


def test_a_layer_of_the_wrong_shape_is_refused_and_left_unchanged():
    x, y, g = small_data()
    result = DFR(subsets=2).fit(x, y, g)
    for layer in (nn.Linear(5, 4), nn.Linear(6, 3), nn.Linear(5, 3, bias=False)):
        weight = layer.weight.detach().clone()
        with pytest.raises(InputError, match="classifier"):
            result.write_into(layer)
        assert torch.equal(layer.weight, weight)
    with pytest.raises(ArgumentTypeError, match="classifier"):
        result.write_into(nn.Conv1d(5, 3, 1))


def test_a_classifier_that_is_not_the_models_own_layer_is_refused():
    model = TwoBranch()
    batches = [(torch.randn(2, 5), torch.randn(2, 3))]
    with pytest.raises(InputError, match="classifier is not a submodule of model"):
        classifier_inputs(model, nn.Linear(6, 3), batches)
    with pytest.raises(ArgumentTypeError, match="classifier must be an nn.Linear"):
        classifier_inputs(model, model.text[1], batches)
    with pytest.raises(InputError, match="batches yielded no batch"):
        classifier_inputs(model, model.classifier, [])
    model.train()
    with pytest.raises(InputError, match="classifier ran 0 times"):
        classifier_inputs(model, model.classifier, [(torch.randn(2, 5), torch.randn(2, 3))], forward=lambda m, b: None)
    assert model.training and not model.classifier._forward_pre_hooks


def test_fits_stopped_at_max_iter_are_counted_in_the_note():
    x, y, g, _ = gaussian_classes(600, seed=12, spread=2.0)
    result = DFR(subsets=2, max_iter=1).fit(x, y, g)
    assert "stopped at max_iter before converging" in result.note
    assert "stopped" not in DFR(subsets=2).fit(x, y, g).note
