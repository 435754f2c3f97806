"""The streaming accuracy accumulator: counts, macro-F1, flip rates and the paired Poisson bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score

from biasaudit.errors import DataError, InputError
from biasaudit.diagnostics.accuracy import BootstrapCounts, ConditionAccumulator, bootstrap_weights
from biasaudit.diagnostics.gap import summarize_gap

CONDITIONS = ["full", "missing:image", "noisy:text"]


def _synthetic(n: int, *, seed: int = 1, num_classes: int = 4) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    full = np.where(rng.random(n) < 0.8, labels, rng.integers(0, num_classes, n))
    missing = np.where(rng.random(n) < 0.4, labels, rng.integers(0, num_classes, n))
    noisy = np.where(rng.random(n) < 0.9, full, rng.integers(0, num_classes, n))
    return {"full": full, "missing:image": missing, "noisy:text": noisy}, labels


def _one_shot(preds, labels, *, replicates=200, seed=0, num_classes=4) -> ConditionAccumulator:
    acc = ConditionAccumulator(list(preds), num_classes=num_classes, replicates=replicates, seed=seed)
    acc.update(preds, labels, indices=np.arange(len(labels)))
    return acc


def _assert_same_state(a: ConditionAccumulator, b: ConditionAccumulator) -> None:
    assert a.n == b.n
    np.testing.assert_array_equal(a.weighted_total, b.weighted_total)
    for c in a.condition_names:
        np.testing.assert_array_equal(a.confusion[c], b.confusion[c])
        np.testing.assert_array_equal(a.weighted_correct[c], b.weighted_correct[c])
        assert a.flips[c] == b.flips[c]
    ra, rb = a.result(), b.result()
    for c in a.condition_names:
        assert ra[c].to_dict() == rb[c].to_dict()
        np.testing.assert_array_equal(ra[c].replicate_accuracy, rb[c].replicate_accuracy)


def test_hand_computed_accuracy_per_class_and_flip_rate():
    """A wrong accuracy, per-class accuracy or flip rate would show in the very first table of a report."""
    labels = np.array([0, 0, 1, 1, 2])
    preds = {"full": np.array([0, 1, 1, 1, 2]), "missing:image": np.array([0, 0, 0, 0, 0])}
    scores = _one_shot(preds, labels, num_classes=3).result()
    assert scores["full"].accuracy == pytest.approx(80.0)
    assert scores["full"].per_class_accuracy == pytest.approx([50.0, 100.0, 100.0])
    assert scores["full"].flip_rate == 0.0
    assert scores["missing:image"].accuracy == pytest.approx(40.0)
    assert scores["missing:image"].per_class_accuracy == pytest.approx([100.0, 0.0, 0.0])
    assert scores["missing:image"].flip_rate == pytest.approx(4 / 5)  # differs from full on 4 of 5 samples
    assert all(s.n == 5 for s in scores.values())


def test_confusion_matrix_has_sklearn_orientation():
    """Rows must be true labels, as sklearn prints them, or the per-class numbers get transposed."""
    preds, labels = _synthetic(300)
    acc = _one_shot(preds, labels)
    for c in CONDITIONS:
        np.testing.assert_array_equal(acc.confusion[c], confusion_matrix(labels, preds[c], labels=range(4)))


@pytest.mark.parametrize("case", [
    ([0, 0, 1, 1, 2], [0, 1, 1, 1, 2]),  # every class present
    ([0, 0, 1, 1], [0, 2, 1, 1]),  # class 2 predicted but never the label; class 3 absent from both
    ([0, 1, 2, 3, 3], [3, 3, 3, 3, 3]),  # degenerate constant prediction
])
def test_macro_f1_matches_sklearn(case):
    """Macro-F1 must equal sklearn's f1_score(average='macro') or users cannot compare with their own runs."""
    labels, predicted = (np.array(v) for v in case)
    scores = _one_shot({"full": predicted}, labels, num_classes=4).result()
    expected = 100 * f1_score(labels, predicted, average="macro", zero_division=0)
    assert scores["full"].macro_f1 == pytest.approx(expected)


def test_absent_class_has_no_accuracy_instead_of_nan():
    """A class with no test samples must read None (JSON null), not NaN that breaks the JSON file."""
    scores = _one_shot({"full": np.array([0, 1])}, np.array([0, 0]), num_classes=3).result()
    assert scores["full"].per_class_accuracy == [50.0, None, None]
    json.dumps(scores["full"].to_dict(), allow_nan=False)
    assert "replicate_accuracy" not in scores["full"].to_dict()


@pytest.mark.parametrize("batch_sizes", [[1] * 7 + [293], [64, 64, 64, 64, 44], [150, 150], [299, 1]])
@pytest.mark.parametrize("shuffle", [False, True])
def test_streaming_equals_one_shot(batch_sizes, shuffle):
    """Batch size or data order must not change a single number of a scan, bootstrap included."""
    preds, labels = _synthetic(300)
    expected = _one_shot(preds, labels)
    order = np.random.default_rng(7).permutation(300) if shuffle else np.arange(300)
    streamed = ConditionAccumulator(CONDITIONS, num_classes=4, replicates=200, seed=0)
    start = 0
    for size in batch_sizes:
        rows = order[start:start + size]
        streamed.update({c: p[rows] for c, p in preds.items()}, labels[rows], indices=rows)
        start += size
    assert start == 300
    _assert_same_state(streamed, expected)


def test_merge_of_shards_equals_one_shot():
    """Sharded scans combined with merge() must report what one scan over all data reports."""
    preds, labels = _synthetic(300)
    expected = _one_shot(preds, labels)
    shards = []
    for rows in np.array_split(np.random.default_rng(3).permutation(300), 3):
        shard = ConditionAccumulator(CONDITIONS, num_classes=4, replicates=200, seed=0)
        shard.update({c: p[rows] for c, p in preds.items()}, labels[rows], indices=rows)
        shards.append(shard)
    shards[0].merge(shards[1])
    shards[0].merge(shards[2])
    _assert_same_state(shards[0], expected)


def test_merge_refuses_different_settings():
    """Merging accumulators with different seeds would silently mix unpaired bootstrap weights."""
    a = ConditionAccumulator(CONDITIONS, num_classes=4, replicates=10, seed=0)
    b = ConditionAccumulator(CONDITIONS, num_classes=4, replicates=10, seed=1)
    with pytest.raises(InputError):
        a.merge(b)


def test_weights_depend_on_sample_index_not_batch():
    """A sample's bootstrap weights must be the same wherever it lands, or streaming != one-shot."""
    alone = bootstrap_weights(np.array([5]), replicates=50, seed=0)
    in_batch = bootstrap_weights(np.array([9, 5, 2]), replicates=50, seed=0)
    np.testing.assert_array_equal(alone[0], in_batch[1])
    assert not np.array_equal(in_batch[0], in_batch[1])  # different samples get different weights
    assert not np.array_equal(alone, bootstrap_weights(np.array([5]), replicates=50, seed=1))


def test_interval_contains_estimate_and_narrows_with_more_samples():
    """An interval that misses the estimate or does not shrink with data would mislead every reader."""
    small_preds, small_labels = _synthetic(100, seed=2)
    large_preds, large_labels = _synthetic(3000, seed=2)
    small = _one_shot(small_preds, small_labels, replicates=500).result()["full"]
    large = _one_shot(large_preds, large_labels, replicates=500).result()["full"]
    for scores in (small, large):
        lo, hi = scores.accuracy_ci
        assert lo < scores.accuracy < hi
    assert (large.accuracy_ci[1] - large.accuracy_ci[0]) < 0.4 * (small.accuracy_ci[1] - small.accuracy_ci[0])


def test_interval_width_matches_binomial_standard_error():
    """The Poisson bootstrap approximates the ordinary bootstrap: its width must be about 2*1.96*SE."""
    preds, labels = _synthetic(2000, seed=4)
    scores = _one_shot(preds, labels, replicates=1000).result()["full"]
    p = scores.accuracy / 100
    expected_width = 2 * 1.96 * 100 * np.sqrt(p * (1 - p) / 2000)
    width = scores.accuracy_ci[1] - scores.accuracy_ci[0]
    assert width == pytest.approx(expected_width, rel=0.15)


def test_bootstrap_is_reproducible_for_a_seed():
    """The same seed must give byte-identical intervals; another seed must give other replicates."""
    preds, labels = _synthetic(200)
    first = _one_shot(preds, labels, seed=11).result()["missing:image"]
    again = _one_shot(preds, labels, seed=11).result()["missing:image"]
    other = _one_shot(preds, labels, seed=12).result()["missing:image"]
    assert first.accuracy_ci == again.accuracy_ci
    np.testing.assert_array_equal(first.replicate_accuracy, again.replicate_accuracy)
    assert not np.array_equal(first.replicate_accuracy, other.replicate_accuracy)


@pytest.mark.parametrize("n", [2, 300])
def test_counts_through_json_reproduce_every_replicate_bit_for_bit(n):
    """audit.json keeps integer counts: read back, they must give the very replicates the scan had, NaN
    (a replicate that drew no sample, common with n = 2) included, or paired intervals from files would drift."""
    preds, labels = _synthetic(n)
    acc = _one_shot(preds, labels, replicates=300)
    text = json.dumps(acc.bootstrap_counts().to_dict())
    counts = BootstrapCounts.from_dict(json.loads(text), conditions=CONDITIONS)
    scores = acc.result()
    for c in CONDITIONS:
        np.testing.assert_array_equal(counts.accuracy(c), scores[c].replicate_accuracy)
    if n == 2:
        assert np.isnan(scores["full"].replicate_accuracy).any()


def test_paired_gap_of_identical_conditions_is_exactly_zero():
    """Pairing: two conditions with the same predictions must get a Gap interval of exactly [0, 0]."""
    preds, labels = _synthetic(200)
    preds["missing:text"] = preds["missing:image"].copy()
    scores = _one_shot(preds, labels).result()
    summary = summarize_gap({m: scores[f"missing:{m}"].accuracy for m in ("image", "text")},
                            replicates={m: scores[f"missing:{m}"].replicate_accuracy for m in ("image", "text")})
    assert summary.gap == 0.0
    assert summary.gap_ci == (0.0, 0.0)
    assert summary.signed_gap_ci == (0.0, 0.0)
    # without pairing the gap interval would be far from a point: check the scores do vary per replicate
    assert np.ptp(scores["missing:image"].replicate_accuracy) > 1.0


def test_user_errors_are_clear_input_errors():
    """Wrong inputs must raise biasaudit errors (exit code 2), not numpy tracebacks."""
    with pytest.raises(InputError, match="full"):
        ConditionAccumulator(["missing:image"], num_classes=2)
    acc = ConditionAccumulator(["full", "missing:image"], num_classes=2, replicates=5)
    with pytest.raises(DataError, match="missing:image"):
        acc.update({"full": np.array([0, 1])}, np.array([0, 1]), indices=np.arange(2))
    with pytest.raises(DataError, match="labels"):
        acc.update({"full": np.array([0, 1]), "missing:image": np.array([0, 1])}, np.array([0, 2]),
                   indices=np.arange(2))
    with pytest.raises(DataError, match="indices"):
        acc.update({"full": np.array([0, 1]), "missing:image": np.array([0, 1])}, np.array([0, 1]),
                   indices=np.arange(3))
    with pytest.raises(DataError, match="no samples"):
        acc.result()
