"""The hierarchical bootstrap over seeds and samples (biasaudit/choosing/pooling.py), on hand-known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biasaudit.errors import InputError
from biasaudit.choosing.pooling import PooledChange, SeedChange, pool_change, pool_changes

R = 1000


def _tight(delta: float, width: float = 0.2, seed: int = 0) -> SeedChange:
    """A seed whose R replicates spread evenly over delta +- width (no randomness in the test data)."""
    return SeedChange(seed, delta, delta + np.linspace(-width, width, R))


def _seeds(*deltas: float, width: float = 0.2) -> list[SeedChange]:
    return [_tight(d, width, seed=i) for i, d in enumerate(deltas)]


def test_identical_seeds_with_zero_width_replicates_give_the_point_as_interval():
    pooled = pool_change([SeedChange(s, 2.5, np.full(R, 2.5)) for s in (0, 1, 2)])
    assert pooled.delta == 2.5
    assert pooled.interval == (2.5, 2.5)
    assert pooled.seed_spread == 0.0 and pooled.seed_min == pooled.seed_max == 2.5
    assert pooled.significant and pooled.draws == R and pooled.no_interval is None


def test_three_seeds_that_agree_are_significant():
    pooled = pool_change(_seeds(5.0, 5.0, 5.0))
    assert pooled.significant
    assert 4.7 < pooled.interval[0] < 5.0 < pooled.interval[1] < 5.3


def test_seeds_that_disagree_are_not_significant_although_each_seed_alone_is():
    changes = _seeds(10.0, -8.0, 1.0)
    assert all(pool_change([c]).significant for c in changes)  # one seed: only the sampling noise
    pooled = pool_change(changes)
    assert pooled.delta == pytest.approx(1.0)
    assert not pooled.significant
    # 3 seeds: "the same seed three times" has probability 1/27 > 2.5%, so the interval spans the seeds' range.
    assert pooled.interval[0] < -7.5 and pooled.interval[1] > 9.5
    assert pooled.seed_spread == pytest.approx(np.std([10.0, -8.0, 1.0], ddof=1))
    assert (pooled.seed_min, pooled.seed_max) == (-8.0, 10.0)


def test_a_method_that_helps_on_one_seed_only_has_an_interval_reaching_zero():
    # A method identical to the control on two seeds: the same predictions, so exactly zero change on every replicate.
    exact = [_tight(12.0, seed=0), SeedChange(1, 0.0, np.zeros(R)), SeedChange(2, 0.0, np.zeros(R))]
    pooled = pool_change(exact)
    assert pooled.delta == pytest.approx(4.0)
    assert pooled.interval[0] == 0.0 and not pooled.significant  # 8/27 of the draws pick only the two null seeds
    noisy = pool_change(_seeds(12.0, 0.0, 0.0))
    assert noisy.interval[0] < 0 < noisy.interval[1] and not noisy.significant


def test_two_seeds_of_constant_replicates_give_the_hand_computed_mixture():
    # Pooled replicates are a, (a+b)/2 or b with probabilities 1/4, 1/2, 1/4: the 2.5 and 97.5 percentiles are a and b.
    pooled = pool_change([SeedChange(0, 0.0, np.zeros(R)), SeedChange(1, 4.0, np.full(R, 4.0))], seed=3)
    assert pooled.interval == (0.0, 4.0) and pooled.delta == 2.0


def test_one_seed_keeps_the_sample_bootstrap_and_has_no_spread():
    pooled = pool_change([SeedChange(7, 5.0, np.array([0.0, 10.0] * (R // 2)))])
    assert pooled.interval == (0.0, 10.0)
    assert pooled.seed_spread is None and pooled.seeds == (7,)
    assert pooled.seed_intervals == ((0.0, 10.0),)


def test_nan_replicates_are_skipped_by_drawing_among_the_finite_ones():
    holes = np.full(R, 3.0)
    holes[::2] = np.nan
    pooled = pool_change([SeedChange(0, 3.0, holes), SeedChange(1, 3.0, np.full(R, 3.0))])
    assert pooled.interval == (3.0, 3.0)  # a NaN drawn would make the interval NaN or shift it


def test_a_seed_without_a_finite_replicate_gives_no_interval_and_says_why():
    pooled = pool_change([_tight(2.0, seed=0), SeedChange(4, 1.0, np.full(R, np.nan))])
    assert pooled.delta == pytest.approx(1.5)
    assert pooled.interval is None and not pooled.significant
    assert pooled.no_interval == "seed 4 has no finite bootstrap replicate of this change"
    assert pooled.seed_intervals[1] is None


def test_a_seed_whose_audits_kept_no_replicates_gives_no_interval():
    pooled = pool_change([_tight(2.0, seed=0), SeedChange(1, 1.0, None)])
    assert pooled.delta == pytest.approx(1.5) and pooled.interval is None
    assert pooled.no_interval == "seed 1 kept no bootstrap replicates"


def test_a_seed_without_a_point_estimate_gives_no_pooled_change():
    pooled = pool_change([_tight(2.0, seed=0), SeedChange(1, float("nan"), np.zeros(R))])
    assert pooled.delta is None and pooled.interval is None
    assert pooled.no_interval == "seed 1 has no point estimate of this change, so it cannot be pooled"
    assert pooled.seed_deltas == (2.0, None) and pooled.seed_spread is None


def test_the_pooled_point_is_the_mean_of_the_seed_deltas():
    deltas = (3.7, -1.2, 0.4, 8.9)
    pooled = pool_change([SeedChange(s, d, np.random.default_rng(s).normal(d, 2.0, R)) for s, d in enumerate(deltas)])
    assert pooled.delta == pytest.approx(np.mean(deltas))
    assert pooled.seed_deltas == deltas


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    changes = [SeedChange(s, d, np.random.default_rng(10 + s).normal(d, 3.0, R)) for s, d in enumerate((1.0, 2.0, 4.0))]
    state = np.random.get_state()
    first, again = pool_change(changes, seed=5), pool_change(changes, seed=5)
    assert first.to_dict() == again.to_dict()
    assert pool_change(changes, seed=6).interval != first.interval
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global random state is never touched


def test_draws_sets_the_number_of_pooled_replicates():
    pooled = pool_change(_seeds(1.0, 2.0), draws=50)
    assert pooled.draws == 50 and pooled.interval is not None


def test_pool_changes_pools_each_measure_with_the_same_seed():
    per_measure = {"full": _seeds(-0.5, 0.2, 0.1), "worst-group": _seeds(6.0, 5.0, 7.0)}
    pooled = pool_changes(per_measure, seed=2)
    assert pooled.keys() == per_measure.keys()
    assert pooled["worst-group"].to_dict() == pool_change(per_measure["worst-group"], seed=2).to_dict()


def test_to_dict_is_plain_json():
    d = pool_change(_seeds(1.0, 2.0, 3.0)).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert isinstance(d["interval"], list) and isinstance(d["seed_intervals"][0], list) and d["significant"] is True


def test_seed_change_copies_and_freezes_its_replicates():
    mine = np.zeros(R)
    change = SeedChange(0, 0.0, mine)
    mine[0] = 99.0
    assert change.replicates[0] == 0.0
    with pytest.raises(ValueError):
        change.replicates[0] = 1.0


@pytest.mark.parametrize(("changes", "kwargs", "message"), [
    ([], {}, "No seed to pool"),
    ([SeedChange(0, 1.0, np.zeros(R)), SeedChange(0, 2.0, np.zeros(R))], {}, "Seed 0 is given twice"),
    ([SeedChange(0, 1.0, np.zeros(R)), SeedChange(1, 2.0, np.zeros(10))], {}, "different replicate counts"),
    ([SeedChange(0, 1.0, np.zeros(R))], {"draws": 0}, "draws is 0"),
    ([SeedChange(0, 1.0, np.zeros(R))], {"seed": -1}, "seed is -1"),
])
def test_bad_input_is_one_clear_sentence(changes, kwargs, message):
    with pytest.raises(InputError, match=message):
        pool_change(changes, **kwargs)


def test_bad_seed_change_is_refused():
    with pytest.raises(InputError, match="one dimension"):
        SeedChange(0, 1.0, np.zeros((2, 3)))
    with pytest.raises(InputError, match="expected the integer training seed"):
        SeedChange("0", 1.0, np.zeros(3))
    with pytest.raises(InputError, match="expected a number in points"):
        SeedChange(0, "big", np.zeros(3))


def test_a_directly_built_pooled_change_is_significant_only_when_its_interval_excludes_zero():
    common = dict(no_interval=None, seeds=(0,), seed_deltas=(1.0,), seed_intervals=(None,), seed_spread=None,
                  seed_min=1.0, seed_max=1.0, draws=1)
    assert PooledChange(delta=1.0, interval=(0.1, 2.0), **common).significant
    assert PooledChange(delta=-1.0, interval=(-2.0, -0.1), **common).significant
    assert not PooledChange(delta=1.0, interval=(0.0, 2.0), **common).significant
    assert not PooledChange(delta=1.0, interval=None, **common).significant
