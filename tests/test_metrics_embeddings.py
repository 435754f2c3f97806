"""Cosine-space embeddings: the bounded sample, the 2-D projections and the angular spread."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from biasaudit.errors import InputError
from biasaudit.diagnostics.embeddings import (MIN_UMAP_POINTS, EmbeddingSample, angular_spread, bias_subset,
                                          project_2d)

N, D = 200, 3


def _data():
    rng = np.random.default_rng(123)
    features = rng.normal(size=(N, D)).astype(np.float32)
    labels = rng.integers(0, 4, size=N)
    bias = rng.integers(0, 3, size=N)
    return features, labels, bias, np.arange(N)


def _feed(order: np.ndarray, batch_size: int, *, capacity: int = 25, seed: int = 0) -> EmbeddingSample:
    features, labels, bias, indices = _data()
    sample = EmbeddingSample(capacity=capacity, seed=seed)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        sample.update(features[rows], labels[rows], bias[rows], indices=indices[rows])
        assert len(sample.result()[3]) <= capacity, "the sample grew beyond its capacity"
    return sample


def test_sample_does_not_depend_on_batch_size_or_order():
    """Otherwise the embedding plot would change when the user changes --batch-size."""
    reference = _feed(np.arange(N), 1)
    shuffled = np.random.default_rng(7).permutation(N)
    for order, batch_size in [(np.arange(N), 64), (shuffled, 13), (shuffled[::-1], N)]:
        other = _feed(order, batch_size)
        for got, want in zip(other.result(), reference.result()):
            np.testing.assert_array_equal(got, want)


def test_sample_equals_one_shot_bottom_k_and_keeps_rows_aligned():
    """The kept rows are the capacity smallest per-sample keys, with each row's own label and bias."""
    features, labels, bias, indices = _data()
    kept_features, kept_labels, kept_bias, kept_indices = _feed(np.arange(N), 17).result()
    one_shot = EmbeddingSample(capacity=25, seed=0)
    one_shot.update(features, labels, bias, indices=indices)
    np.testing.assert_array_equal(one_shot.result()[3], kept_indices)
    # The keys are draws of each index's own stream: recompute and take the 25 smallest by hand.
    from biasaudit._core.randomness import uniform
    keys = uniform(0, "embedding-sample", indices)
    np.testing.assert_array_equal(kept_indices, np.sort(np.argsort(keys)[:25]))
    np.testing.assert_array_equal(kept_features, features[kept_indices])
    np.testing.assert_array_equal(kept_labels, labels[kept_indices])
    np.testing.assert_array_equal(kept_bias, bias[kept_indices])


def test_sample_depends_on_seed_and_keeps_everything_below_capacity():
    assert not np.array_equal(_feed(np.arange(N), 50, seed=0).result()[3], _feed(np.arange(N), 50, seed=1).result()[3])
    everything = _feed(np.arange(N), 50, capacity=500).result()
    np.testing.assert_array_equal(everything[3], np.arange(N))


def test_sample_without_bias_returns_none():
    features, labels, _, indices = _data()
    sample = EmbeddingSample(capacity=10)
    sample.update(features, labels, None, indices=indices)
    assert sample.result()[2] is None


def test_bias_subset_picks_most_frequent_value_or_the_asked_one():
    bias = np.array([2, 0, 2, 1, 2, 0])
    value, mask = bias_subset(bias)
    assert value == 2 and mask.tolist() == [True, False, True, False, True, False]
    assert bias_subset(bias, value=1)[1].sum() == 1
    with pytest.raises(InputError, match="Available: 0, 1, 2"):
        bias_subset(bias, value=5)


def test_pca_projection_shapes_and_cosine_invariance_to_row_scaling():
    """The cosine plot must show directions only: rescaling a sample must not move it."""
    features = _data()[0].astype(np.float64)
    scales = np.random.default_rng(3).uniform(0.1, 10.0, size=(N, 1))
    plain = project_2d(features, method="pca")
    scaled = project_2d(features * scales, method="pca")
    assert plain.method_used == "pca" and plain.note is None
    assert plain.euclidean.shape == (N, 2) and plain.cosine.shape == (N, 2)
    np.testing.assert_allclose(scaled.cosine, plain.cosine, atol=1e-9)
    # ...while the Euclidean plot does see the scaling (so the two views really differ).
    assert not np.allclose(scaled.euclidean, plain.euclidean, atol=1e-3)


def test_umap_falls_back_to_pca_for_few_points_and_says_so():
    features = _data()[0][: MIN_UMAP_POINTS - 1]
    projection = project_2d(features, method="umap", seed=0)
    assert projection.method_used == "pca"
    assert "PCA" in projection.note and str(MIN_UMAP_POINTS - 1) in projection.note
    assert projection.euclidean.shape == (MIN_UMAP_POINTS - 1, 2)


def test_unknown_projection_method_names_the_choices():
    with pytest.raises(InputError, match="Available: umap, pca"):
        project_2d(_data()[0], method="tsne")


def test_umap_projection_is_seeded_and_shows_no_thread_warning():
    """Same seed, same picture; and no 'n_jobs overridden' warning leaks to the user."""
    features = _data()[0][:60]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # overrides the project's ignore filter, so a leak would show here
        first = project_2d(features, method="umap", seed=0)
    assert not [w for w in caught if "overridden to 1" in str(w.message)]
    second = project_2d(features, method="umap", seed=0)
    assert first.method_used == "umap" and first.note is None
    assert first.euclidean.shape == (60, 2) and first.cosine.shape == (60, 2)
    np.testing.assert_array_equal(first.euclidean, second.euclidean)
    np.testing.assert_array_equal(first.cosine, second.cosine)
    assert np.all(np.isfinite(first.euclidean)) and not np.allclose(first.euclidean, first.cosine)


def test_angular_spread_of_vectors_at_plus_minus_30_degrees_is_30():
    """Class 0: unit-free vectors at +-30 degrees around the x axis; class 2: all on one ray (0 degrees)."""
    angle = math.radians(30)
    features = np.array([[math.cos(angle), math.sin(angle)], [3 * math.cos(angle), -3 * math.sin(angle)],
                         [0.0, 2.0], [0.0, 5.0], [0.0, 0.5]])
    labels = np.array([0, 0, 2, 2, 2])
    rows = angular_spread(features, labels, num_classes=3)
    assert [(r["class"], r["n"]) for r in rows] == [(0, 2), (2, 3)]  # class 1 has no samples: omitted
    assert rows[0]["mean_angle_deg"] == pytest.approx(30.0, abs=1e-9)
    assert rows[1]["mean_angle_deg"] == pytest.approx(0.0, abs=1e-6)


def test_angular_spread_of_opposite_vectors_is_undefined_not_a_number():
    rows = angular_spread(np.array([[1.0, 0.0], [-2.0, 0.0]]), np.array([0, 0]), num_classes=2)
    assert rows == [{"class": 0, "n": 2, "mean_angle_deg": None}]
