"""Counter-based draws (methods.md section 10). If a draw depended on the batch, the order or the process it was
made in, a scan with another batch size or a sharded scan would report different numbers; if the draws were
skewed, noise conditions and bootstrap intervals would be wrong."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from biasaudit._core.randomness import SampleDraws, hash64, poisson1, uniform


def test_a_samples_draws_do_not_depend_on_the_batch_it_arrives_in():
    whole = SampleDraws(0, "noise", np.arange(100)).normal(7)
    for split in ([0, 13, 100], [0, 1, 2, 50, 100]):
        parts = [SampleDraws(0, "noise", np.arange(lo, hi)).normal(7) for lo, hi in zip(split, split[1:])]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    reordered = SampleDraws(0, "noise", np.arange(100)[::-1]).normal(7)
    np.testing.assert_array_equal(reordered, whole[::-1])
    # A longer request extends a sample's draws without changing the first ones (the k-th token keeps its draw).
    np.testing.assert_array_equal(SampleDraws(0, "noise", np.arange(100)).normal(20)[:, :7], whole)


def test_seed_stream_and_index_each_change_the_draws():
    base = SampleDraws(0, "noise", np.arange(50)).uniform(4)
    assert not np.array_equal(base, SampleDraws(1, "noise", np.arange(50)).uniform(4))
    assert not np.array_equal(base, SampleDraws(0, "other", np.arange(50)).uniform(4))
    assert not np.array_equal(base, SampleDraws(0, "noise", np.arange(1, 51)).uniform(4))
    assert len(np.unique(base)) == base.size  # no two positions or samples share a draw


def test_uniforms_and_normals_have_their_distributions():
    u = SampleDraws(3, "u", np.arange(2000)).uniform(50).ravel()
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    z = SampleDraws(3, "z", np.arange(2000)).normal(50).ravel()
    assert np.isfinite(z).all() and stats.kstest(z, "norm").pvalue > 1e-3
    # Neighbouring positions of one sample are not correlated (each word is hashed on its own).
    grid = SampleDraws(3, "z", np.arange(5000)).normal(2)
    assert abs(np.corrcoef(grid[:, 0], grid[:, 1])[0, 1]) < 0.05


def test_poisson_bootstrap_weights_have_mean_and_variance_one():
    weights = poisson1(0, "bootstrap-weights", np.arange(4000), 250)
    assert weights.dtype == np.int64 and weights.min() >= 0
    assert abs(weights.mean() - 1) < 0.01 and abs(weights.var() - 1) < 0.02
    np.testing.assert_array_equal(poisson1(0, "bootstrap-weights", np.arange(10, 20), 250), weights[10:20])


def test_draws_for_an_empty_batch_are_empty():
    assert SampleDraws(0, "x", np.arange(0)).normal(5).shape == (0, 5)
    assert uniform(0, "x", np.arange(0)).shape == (0,)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_a_seed_outside_64_bits_is_refused(seed):
    from biasaudit.errors import InputError

    with pytest.raises(InputError, match="seed is"):
        hash64(seed, "x", np.arange(3))


def test_poisson_weights_follow_the_poisson_distribution_in_every_bucket():
    """The weights are the inverse CDF of a 53-bit uniform: the table settles a draw from its top 16 bits, and a draw
    whose 16-bit bucket a CDF step cuts reads 37 more bits. Skewed weights would skew every bootstrap interval."""
    from biasaudit._core.randomness import _POISSON1_CDF

    indices, replicates = np.arange(40000), 250
    weights = poisson1(5, "bootstrap-weights", indices, replicates)
    counts = np.bincount(weights.ravel(), minlength=8)[:8]
    expected = stats.poisson(1).pmf(np.arange(8)) * weights.size
    assert stats.chisquare(counts[:7], expected[:7] * counts[:7].sum() / expected[:7].sum()).pvalue > 1e-3
    # Each draw agrees with its 16-bit bucket: the value's CDF interval overlaps the bucket's 1/65536 of [0, 1).
    words = SampleDraws(5, "bootstrap-weights", indices).words(-(-replicates // 4))
    bucket = words.astype("<u8").view("<u2")[:, :replicates].astype(np.float64)
    lower = np.concatenate([[0.0], _POISSON1_CDF])[weights]
    upper = _POISSON1_CDF[weights]
    assert np.all(lower < (bucket + 1) / 65536) and np.all(upper > bucket / 65536)
    # Draws in cut buckets take both neighbouring values (the tail bits decide), as the inverse CDF must.
    cut = np.isin(bucket, np.floor(_POISSON1_CDF[:3] * 65536))
    assert cut.any() and len(np.unique(weights[cut])) >= 2


# The draws of the generator version audits record (randomness.GENERATOR). Two audits of one version pair their
# bootstrap replicates; if the draws changed without a new version, an audit would pair with one drawn differently.
DRAWS_SHA256 = {3: "8359c302b08d6f433087ab2c2e626b688102abb145014a597793d708d51b6f1f"}


def test_the_draws_change_only_with_the_generator_version():
    import hashlib

    from biasaudit._core.randomness import GENERATOR

    digest = hashlib.sha256()
    digest.update(poisson1(0, "bootstrap-weights", np.arange(1000), 1000).astype("<i8").tobytes())
    draws = SampleDraws(0, "noise", np.arange(1000))
    for values in (draws.words(5), draws.uniform(3)):  # integer arithmetic only: the same bits on every machine
        digest.update(values.astype(values.dtype.newbyteorder("<")).tobytes())
    assert digest.hexdigest() == DRAWS_SHA256[GENERATOR["version"]]
