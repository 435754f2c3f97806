"""Counter-based draws (methods.md section 10). If a draw depended on the batch, the order or the process it was
made in, a scan with another batch size or a sharded scan would report different numbers; if the draws were
skewed, noise conditions and bootstrap intervals would be wrong."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from biasaudit.randomness import SampleDraws, hash64, poisson1, uniform


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
