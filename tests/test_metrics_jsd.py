"""The JSD diagnostic: the divergence itself, the bias prior, the streaming accumulator, k-means bias."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from biasaudit.errors import DataError, InputError
from biasaudit.diagnostics.jsd import BiasPrior, JSDAccumulator, discover_bias_clusters, jsd_base2


def test_jsd_extremes():
    """Disjoint distributions must score 1 bit and equal ones 0, or the [0, 1] scale is broken."""
    assert jsd_base2(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert jsd_base2(np.array([0.2, 0.3, 0.5]), np.array([0.2, 0.3, 0.5])) == 0.0
    assert jsd_base2(np.array([2.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(1.0)  # counts are normalised


def test_jsd_worked_example_by_hand():
    """P=[1,0], Q=[.5,.5]: M=[.75,.25]; a natural-log or unsquared JSD would give another number."""
    kl_p = 1.0 * math.log2(1.0 / 0.75)
    kl_q = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    expected = 0.5 * kl_p + 0.5 * kl_q  # = 0.31128 bits
    assert jsd_base2(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.311278, abs=1e-6)


def test_jsd_equals_squared_scipy_base2():
    """Our JSD is scipy's Jensen-Shannon *distance* squared, in base 2, on arbitrary distributions."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(5) * 0.3)
        assert jsd_base2(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-12)


def test_jsd_rejects_invalid_distributions():
    """Negative or mismatched distributions must be a clear error, not a silent NaN in the report."""
    with pytest.raises(InputError):
        jsd_base2(np.array([0.5, -0.5]), np.array([0.5, 0.5]))
    with pytest.raises(InputError):
        jsd_base2(np.array([0.5, 0.5]), np.array([0.2, 0.3, 0.5]))
    with pytest.raises(InputError):
        jsd_base2(np.array([0.0, 0.0]), np.array([0.5, 0.5]))


def _tiny_prior() -> BiasPrior:
    prior = BiasPrior(num_classes=3, num_bias=2)
    prior.update(np.array([0, 0, 0, 1, 2, 2]), np.array([0, 0, 0, 0, 1, 1]))  # P_0 = [.75,.25,0], P_1 = [0,0,1]
    return prior


TINY_PROBS = np.array([
    [0.6, 0.3, 0.1],  # bias 0, label 1, predicted 0: wrong
    [0.2, 0.2, 0.6],  # bias 0, label 1, predicted 2: wrong
    [0.9, 0.05, 0.05],  # bias 0, label 0: right
    [0.1, 0.1, 0.8],  # bias 1, label 2: right
])
TINY_LABELS = np.array([1, 1, 0, 2])
TINY_BIAS = np.array([0, 0, 0, 1])


def test_bias_prior_counts_and_distribution():
    """P_k must be the label distribution of training samples with bias k."""
    prior = _tiny_prior()
    np.testing.assert_array_equal(prior.counts, [[3, 1, 0], [0, 0, 2]])
    np.testing.assert_allclose(prior.distribution(0), [0.75, 0.25, 0.0])
    np.testing.assert_allclose(prior.distribution(1), [0.0, 0.0, 1.0])
    rebuilt = BiasPrior.from_counts(np.array([[3, 1, 0], [0, 0, 2]]))
    np.testing.assert_array_equal(rebuilt.counts, prior.counts)
    empty = BiasPrior(num_classes=3, num_bias=3)
    with pytest.raises(DataError, match="bias value 2"):
        empty.distribution(2)


def test_soft_and_argmax_variants_on_a_hand_made_batch():
    """Q_k soft = mean softmax over wrong samples, argmax = histogram of their predictions; JSD by hand."""
    acc = JSDAccumulator(num_classes=3, num_bias=2)
    acc.update(TINY_PROBS, TINY_LABELS, TINY_BIAS)
    result = acc.result(_tiny_prior(), min_wrong=2, bias_names=["red", "green"])
    red, green = result.per_bias["red"], result.per_bias["green"]
    assert (red["bias"], red["n_eval"], red["n_wrong"]) == (0, 3, 2)
    np.testing.assert_allclose(red["q_soft"], [0.4, 0.25, 0.35], atol=1e-9)
    np.testing.assert_allclose(red["q_argmax"], [0.5, 0.0, 0.5])
    np.testing.assert_allclose(red["prior"], [0.75, 0.25, 0.0])
    # argmax variant by hand: P=[.75,.25,0], Q=[.5,0,.5], M=[.625,.125,.25]
    kl_p = 0.75 * math.log2(0.75 / 0.625) + 0.25 * math.log2(0.25 / 0.125)
    kl_q = 0.5 * math.log2(0.5 / 0.625) + 0.5 * math.log2(0.5 / 0.25)
    assert red["argmax"] == pytest.approx(0.5 * (kl_p + kl_q), abs=1e-12)
    assert red["soft"] == pytest.approx(jensenshannon([0.75, 0.25, 0.0], [0.4, 0.25, 0.35], base=2) ** 2, abs=1e-9)
    assert red["soft"] != pytest.approx(red["argmax"])  # the two variants really differ
    # green: no mistakes -> no Q_k and no JSD
    assert (green["n_eval"], green["n_wrong"], green["soft"], green["argmax"], green["q_soft"]) == (1, 0, None, None, None)
    assert result.mean == pytest.approx(red["soft"]) and result.weighted_mean == pytest.approx(red["soft"])
    assert result.argmax_mean == pytest.approx(red["argmax"])
    assert result.most_frequent == {"bias": 0, "name": "red", "soft": red["soft"], "argmax": red["argmax"]}
    assert (result.min_wrong, result.variant) == (2, "soft")
    assert acc.result(_tiny_prior(), min_wrong=3).mean is None  # no bias value has 3 mistakes
    json.dumps(result.to_dict(), allow_nan=False)


def test_mean_and_weighted_mean_follow_their_rules():
    """Unweighted mean uses only |W_k| >= min_wrong; weighted mean uses all |W_k| > 0 with a prior."""
    prior = BiasPrior.from_counts(np.array([[4, 0], [0, 4], [0, 0]]))  # bias 2 has no training samples
    acc = JSDAccumulator(num_classes=2, num_bias=3)
    probs = np.array([[0.1, 0.9]] * 3 + [[0.8, 0.2]] + [[0.3, 0.7]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 0])  # every sample is wrong
    bias = np.array([0, 0, 0, 1, 2, 2])
    acc.update(probs, labels, bias)
    result = acc.result(prior, min_wrong=2)
    j0 = jsd_base2(np.array([1.0, 0.0]), np.array([0.1, 0.9]))
    j1 = jsd_base2(np.array([0.0, 1.0]), np.array([0.8, 0.2]))
    assert result.per_bias["0"]["soft"] == pytest.approx(j0)
    assert result.per_bias["1"]["soft"] == pytest.approx(j1)
    assert result.per_bias["2"]["soft"] is None and result.per_bias["2"]["prior"] is None
    assert result.mean == pytest.approx(j0)  # bias 1 has one mistake < 2, bias 2 no prior
    assert result.weighted_mean == pytest.approx((3 * j0 + 1 * j1) / 4)
    assert acc.result(prior, min_wrong=1).mean == pytest.approx((j0 + j1) / 2)
    assert result.argmax_weighted_mean == pytest.approx((3 * 1.0 + 1 * 1.0) / 4)  # argmax Q is disjoint from P
    assert result.most_frequent["bias"] == 0


def _random_eval(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4) * 0.5, size=n)
    return probs, rng.integers(0, 4, n), rng.integers(0, 3, n)


@pytest.mark.parametrize("batch_sizes", [[1] * 5 + [195], [32] * 6 + [8], [100, 100]])
@pytest.mark.parametrize("shuffle", [False, True])
def test_streaming_equals_one_shot(batch_sizes, shuffle):
    """Batch size and order must not change one bit of the JSD numbers (fixed-point soft sums)."""
    probs, labels, bias = _random_eval(200)
    prior = BiasPrior.from_counts(np.array([[5, 1, 1, 1], [1, 5, 1, 1], [1, 1, 5, 1]]))
    one_shot = JSDAccumulator(num_classes=4, num_bias=3)
    one_shot.update(probs, labels, bias)
    order = np.random.default_rng(5).permutation(200) if shuffle else np.arange(200)
    streamed = JSDAccumulator(num_classes=4, num_bias=3)
    start = 0
    for size in batch_sizes:
        rows = order[start:start + size]
        streamed.update(probs[rows], labels[rows], bias[rows])
        start += size
    for name in ("n_eval", "n_wrong", "soft_sum", "argmax_hist"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(one_shot, name))
    assert streamed.result(prior, min_wrong=5).to_dict() == one_shot.result(prior, min_wrong=5).to_dict()


def test_merge_equals_one_shot_for_accumulator_and_prior():
    """Sharded evaluation and sharded prior counting must combine into the one-shot numbers."""
    probs, labels, bias = _random_eval(200, seed=3)
    one_shot = JSDAccumulator(num_classes=4, num_bias=3)
    one_shot.update(probs, labels, bias)
    whole_prior = BiasPrior(num_classes=4, num_bias=3)
    whole_prior.update(labels, bias)
    left, right = JSDAccumulator(num_classes=4, num_bias=3), JSDAccumulator(num_classes=4, num_bias=3)
    left.update(probs[:70], labels[:70], bias[:70])
    right.update(probs[70:], labels[70:], bias[70:])
    left.merge(right)
    prior_a, prior_b = BiasPrior(num_classes=4, num_bias=3), BiasPrior(num_classes=4, num_bias=3)
    prior_a.update(labels[:120], bias[:120])
    prior_b.update(labels[120:], bias[120:])
    prior_a.merge(prior_b)
    np.testing.assert_array_equal(prior_a.counts, whole_prior.counts)
    assert left.result(prior_a).to_dict() == one_shot.result(whole_prior).to_dict()
    with pytest.raises(InputError):
        left.merge(JSDAccumulator(num_classes=4, num_bias=2))


def test_bad_inputs_raise_clear_errors():
    """Logits instead of softmax, out-of-range bias values or a mismatched prior are user errors."""
    acc = JSDAccumulator(num_classes=3, num_bias=2)
    with pytest.raises(DataError, match="softmax"):
        acc.update(np.array([[2.0, -1.0, 0.5]]), np.array([0]), np.array([0]))
    with pytest.raises(DataError, match="bias values"):
        acc.update(TINY_PROBS, TINY_LABELS, np.array([0, 0, 0, 2]))
    with pytest.raises(DataError, match="no evaluation samples"):
        acc.result(_tiny_prior())
    acc.update(TINY_PROBS, TINY_LABELS, TINY_BIAS)
    with pytest.raises(InputError, match="prior"):
        acc.result(BiasPrior(num_classes=3, num_bias=3))
    with pytest.raises(InputError, match="bias_names"):
        acc.result(_tiny_prior(), bias_names=["only-one"])


def test_kmeans_bias_clusters_recover_blobs_and_clip_k():
    """Without a bias attribute, k-means must find obvious groups, deterministically, with k clipped."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = np.repeat(np.arange(3), 20)
    points = centres[truth] + rng.normal(scale=0.3, size=(60, 2))
    model = discover_bias_clusters(points, k=3, seed=0)
    found = model.predict(points)
    for group in range(3):  # each true blob is one cluster, and distinct blobs get distinct clusters
        assert len(set(found[truth == group])) == 1
    assert len(set(found)) == 3
    np.testing.assert_array_equal(discover_bias_clusters(points, k=3, seed=0).predict(points), found)
    tiny = discover_bias_clusters(np.array([[0.0, 1.0], [0.0, 1.0], [5.0, 5.0]]), k=16)
    assert tiny.n_clusters == 2
    with pytest.raises(DataError):
        discover_bias_clusters(np.zeros((0, 2)))
