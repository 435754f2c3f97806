"""The leaderboard's recommendation rule (biasaudit/choosing/rule.py): methods.md section 8's do-no-harm rule,
the majority-of-seeds guard, the primary measure's tie-break, and the words that follow from the numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biasaudit.errors import InputError
from biasaudit.choosing.pooling import PooledChange, SeedChange, pool_change
from biasaudit.choosing.rule import recommend

R = 1000


def _pooled(*deltas: float, width: float = 0.2) -> PooledChange:
    """Seeds whose replicates spread evenly over delta +- width, pooled (no randomness in the test data)."""
    return pool_change([SeedChange(i, d, d + np.linspace(-width, width, R)) for i, d in enumerate(deltas)])


def _given(delta: float, lo: float, hi: float, seed_deltas: tuple[float, ...]) -> PooledChange:
    """A pooled change with the interval written out, for cases the bootstrap rarely produces."""
    return PooledChange(delta=delta, interval=(lo, hi), no_interval=None, seeds=tuple(range(len(seed_deltas))),
                        seed_deltas=seed_deltas, seed_intervals=(None,) * len(seed_deltas),
                        seed_spread=float(np.std(seed_deltas, ddof=1)), seed_min=min(seed_deltas), seed_max=max(seed_deltas), draws=R)


NEUTRAL_FULL = _given(-0.4, -0.9, 0.2, (-0.5, -0.3, -0.4))


def test_a_clear_winner_is_recommended_with_its_figures():
    result = recommend({
        "mmdb": {"full": NEUTRAL_FULL, "worst_group": _given(6.3, 2.1, 10.4, (5.0, 7.0, 6.9))},
        "jtt": {"full": NEUTRAL_FULL, "worst_group": _given(1.0, -2.0, 4.0, (1.0, -1.0, 3.0))},
    })
    assert result.method == "mmdb" and result.ranking == ("mmdb",)
    mmdb = result.per_method["mmdb"]
    assert mmdb.recommended and mmdb.rank == 1 and mmdb.improved == ("worst_group",) and mmdb.full_non_inferior
    assert mmdb.sentence == ("mmdb raised worst-group accuracy +6.3 [2.1, 10.4] points (better on 3 of 3 seeds), "
                             "and Full accuracy stayed within the 1-point margin (-0.4 [-0.9, 0.2] points).")
    assert result.verdict == f"Recommended: mmdb. {mmdb.sentence}"
    assert result.reasons[0] == mmdb.sentence
    assert not result.per_method["jtt"].recommended and result.per_method["jtt"].rank is None


def test_a_bias_gain_that_costs_full_accuracy_beyond_the_margin_is_not_recommended():
    result = recommend({"mmdb": {"full": _given(-19.4, -25.0, -13.8, (-18.0, -20.0, -20.2)),
                                 "follow_rate": _given(-37.1, -45.0, -29.0, (-35.0, -38.0, -38.3))}}, carrier="text")
    assert result.method is None
    mmdb = result.per_method["mmdb"]
    assert mmdb.improved == ("follow_rate",) and not mmdb.full_non_inferior
    assert mmdb.full_delta == -19.4 and mmdb.full_interval == (-25.0, -13.8)
    assert mmdb.sentence == ("mmdb lowered the text bias-follow rate -37.1 [-45.0, -29.0] points (better on 3 of 3 seeds) "
                             "but cost 19.4 points of Full accuracy (-19.4 [-25.0, -13.8] points), beyond the 1-point margin.")
    assert result.verdict == f"No method helps here: {mmdb.sentence}"


def test_full_accuracy_whose_interval_reaches_below_the_margin_is_not_non_inferior():
    # The point loss is small, but the interval cannot rule out a loss beyond 1 point.
    result = recommend({"dfr": {"full": _given(-0.5, -2.0, 1.0, (-0.5, -1.0, 0.0)),
                                "worst_group": _given(5.0, 2.0, 8.0, (5.0, 4.0, 6.0))}})
    assert result.method is None and not result.per_method["dfr"].full_non_inferior
    assert "could not rule out a Full accuracy loss beyond the 1-point margin (-0.5 [-2.0, 1.0] points)" in result.verdict
    # A wider margin admits it; the words name the margin.
    wider = recommend({"dfr": {"full": _given(-0.5, -2.0, 1.0, (-0.5, -1.0, 0.0)),
                               "worst_group": _given(5.0, 2.0, 8.0, (5.0, 4.0, 6.0))}}, max_full_drop=2.5)
    assert wider.method == "dfr" and "within the 2.5-point margin" in wider.verdict


def test_nothing_moves_means_no_method_helps_here_with_the_numbers_behind_it():
    result = recommend({
        "jtt": {"full": _pooled(0.3, -0.2, 0.2), "worst_group": _pooled(1.0, -2.0, 2.5, width=0.5),
                "bias_balanced": _pooled(0.5, -0.5, 0.3)},
        "ogm_ge": {"full": _pooled(-0.1, 0.1, 0.0), "worst_group": _pooled(-1.0, 0.5, 1.0, width=0.5)},
    })
    assert result.method is None and result.ranking == ()
    jtt = result.per_method["jtt"]
    assert jtt.improved == () and jtt.full_non_inferior
    wg, bb, full = (_pooled(1.0, -2.0, 2.5, width=0.5), _pooled(0.5, -0.5, 0.3), _pooled(0.3, -0.2, 0.2))
    assert wg.interval[0] < 0 < wg.interval[1] and bb.interval[0] < 0 < bb.interval[1]
    assert jtt.sentence == (f"jtt moved no bias measure beyond noise (worst-group accuracy +0.5 [{wg.interval[0]:.1f}, "
                            f"{wg.interval[1]:.1f}] points; bias-balanced accuracy +0.1 [{bb.interval[0]:.1f}, {bb.interval[1]:.1f}] "
                            f"points); Full accuracy stayed within the 1-point margin (+0.1 [{full.interval[0]:.1f}, "
                            f"{full.interval[1]:.1f}] points).")
    assert result.verdict.startswith("No method helps here: jtt moved no bias measure beyond noise")
    assert "ogm_ge moved no bias measure beyond noise (worst-group accuracy +0.2 [" in result.verdict
    assert result.reasons == (jtt.sentence, result.per_method["ogm_ge"].sentence)


def test_ties_are_broken_by_the_primary_measure():
    changes = {
        "balgrad": {"full": NEUTRAL_FULL, "worst_group": _pooled(4.0, 5.0, 3.0), "bias_balanced": _pooled(9.0, 8.0, 10.0)},
        "group_dro": {"full": NEUTRAL_FULL, "worst_group": _pooled(7.0, 6.0, 8.0), "bias_balanced": _pooled(2.0, 3.0, 1.0)},
        "dfr": {"full": NEUTRAL_FULL, "bias_balanced": _pooled(12.0, 11.0, 13.0)},  # no worst-group figure
    }
    by_worst = recommend(changes)
    assert by_worst.method == "group_dro" and by_worst.ranking == ("group_dro", "balgrad", "dfr")
    assert by_worst.per_method["dfr"].primary_gain is None and by_worst.per_method["dfr"].rank == 3
    assert ("Chosen over balgrad, dfr, which also pass the rule, by worst-group accuracy, the primary measure "
            "(point changes group_dro +7.0, balgrad +4.0, dfr n/a points).") in by_worst.verdict
    by_balanced = recommend(changes, primary="bias-balanced")
    assert by_balanced.method == "dfr" and by_balanced.ranking == ("dfr", "balgrad", "group_dro")
    assert by_balanced.primary == "bias-balanced"
    assert recommend(changes, primary="bias_balanced").to_dict() == by_balanced.to_dict()  # the measure key works too


def test_equal_primary_gains_keep_the_order_given():
    changes = {name: {"full": NEUTRAL_FULL, "worst_group": _pooled(5.0, 5.0, 5.0)} for name in ("ogm_ge", "balgrad")}
    assert recommend(changes).ranking == ("ogm_ge", "balgrad")


def test_a_method_that_helps_on_one_seed_only_is_not_recommended():
    # From the bootstrap: identical to the control on two seeds (exact zeros), +12 on one: the interval reaches 0.
    one_seed = pool_change([SeedChange(0, 12.0, 12.0 + np.linspace(-0.2, 0.2, R)),
                            SeedChange(1, 0.0, np.zeros(R)), SeedChange(2, 0.0, np.zeros(R))])
    result = recommend({"lucky": {"full": NEUTRAL_FULL, "worst_group": one_seed}})
    assert result.method is None and result.per_method["lucky"].improved == ()
    assert result.verdict.startswith("No method helps here: lucky moved no bias measure beyond noise (worst-group accuracy +4.0 [0.0,")
    # Even an interval that excludes zero does not make it a recommendation: the majority-of-seeds guard refuses it.
    forced = recommend({"lucky": {"full": NEUTRAL_FULL, "worst_group": _given(4.0, 0.3, 11.8, (12.0, 0.0, 0.0))}})
    lucky = forced.per_method["lucky"]
    assert forced.method is None and lucky.improved == () and lucky.one_sided == ("worst_group",)
    assert lucky.sentence == ("lucky raised worst-group accuracy +4.0 [0.3, 11.8] points but on only 1 of 3 seeds "
                              "(seed changes +12.0, +0.0, +0.0): not a consistent gain; Full accuracy stayed within the "
                              "1-point margin (-0.4 [-0.9, 0.2] points).")
    # Two of three seeds is a majority.
    assert recommend({"steady": {"full": NEUTRAL_FULL, "worst_group": _given(4.0, 0.3, 11.8, (12.0, 0.5, -0.5))}}).method == "steady"


def test_a_strong_minority_of_seeds_lifts_the_interval_but_the_guard_refuses_it():
    minority = _pooled(10.0, 10.0, 10.0, 10.0, -0.1, -0.1, -0.1, -0.1, -0.1, -0.1)
    assert minority.significant and minority.interval[0] > 0  # 0.6^10: the draws of only null seeds stay below 2.5%
    result = recommend({"ogm_ge": {"full": NEUTRAL_FULL, "worst_group": minority}})
    assert result.method is None and result.per_method["ogm_ge"].one_sided == ("worst_group",)
    assert "but on only 4 of 10 seeds (seed changes +10.0, +10.0, +10.0, +10.0, -0.1, -0.1, -0.1, -0.1, -0.1, -0.1)" in result.verdict


def test_the_bias_follow_rate_improves_downwards():
    down = recommend({"mmdb": {"full": NEUTRAL_FULL, "follow_rate": _pooled(-20.0, -18.0, -22.0)}}, carrier="text")
    assert down.method == "mmdb" and down.per_method["mmdb"].improved == ("follow_rate",)
    assert "mmdb lowered the text bias-follow rate -20.0 [" in down.verdict
    up = recommend({"mmdb": {"full": NEUTRAL_FULL, "follow_rate": _pooled(20.0, 18.0, 22.0)}})
    assert up.method is None and up.per_method["mmdb"].worsened == ("follow_rate",)
    assert "mmdb improved no bias measure" in up.verdict and "it also raised the carrier's bias-follow rate +20.0 [" in up.verdict
    # The primary measure's gain is turned so that positive is better.
    assert recommend({"mmdb": {"full": NEUTRAL_FULL, "follow_rate": _pooled(-20.0, -18.0, -22.0)}},
                     primary="follow-rate").per_method["mmdb"].primary_gain == pytest.approx(20.0)


def test_a_worsened_bias_measure_is_said_but_does_not_block():
    result = recommend({"dfr": {"full": NEUTRAL_FULL, "worst_group": _pooled(5.0, 4.0, 6.0),
                                "follow_rate": _pooled(3.0, 4.0, 5.0)}}, carrier="text")
    assert result.method == "dfr" and result.per_method["dfr"].worsened == ("follow_rate",)
    assert result.per_method["dfr"].sentence.endswith("; it also raised the text bias-follow rate +4.0 [3.0, 5.0] points.")


def test_the_gap_is_reliance_and_never_decides():
    result = recommend({"balgrad": {"full": NEUTRAL_FULL, "gap": _pooled(-20.0, -18.0, -22.0)}})
    assert result.method is None and result.per_method["balgrad"].improved == ()


def test_ood_accuracy_counts_only_on_an_ood_split():
    changes = {"mmdb": {"full": NEUTRAL_FULL, "ood": _pooled(10.0, 8.0, 12.0)}}
    iid = recommend(changes)
    assert iid.method is None and iid.per_method["mmdb"].improved == ()
    assert iid.verdict == ("No method helps here: mmdb has no bias measure to judge (OOD accuracy counts only on an "
                           "out-of-distribution split); "
                           "Full accuracy stayed within the 1-point margin (-0.4 [-0.9, 0.2] points).")
    ood = recommend(changes, ood_split=True, primary="ood")
    assert ood.method == "mmdb" and ood.per_method["mmdb"].improved == ("ood",)
    assert "mmdb raised OOD accuracy +10.0 [" in ood.verdict
    assert "mmdb has no bias measure to judge (none was given)" in recommend({"mmdb": {"full": NEUTRAL_FULL}}).verdict
    with pytest.raises(InputError, match="not out-of-distribution"):
        recommend(changes, primary="ood")


def test_a_full_change_without_an_interval_is_not_shown_non_inferior():
    full = pool_change([SeedChange(0, 0.0, np.full(R, np.nan)), SeedChange(1, 0.0, np.zeros(R))])
    result = recommend({"dfr": {"full": full, "worst_group": _pooled(5.0, 4.0, 6.0)}})
    assert result.method is None and not result.per_method["dfr"].full_non_inferior
    assert ("but its Full accuracy change has no interval (seed 0 has no finite bootstrap replicate of this change), "
            "so it is not shown to be non-inferior.") in result.verdict
    missing = recommend({"dfr": {"worst_group": _pooled(5.0, 4.0, 6.0)}})
    assert missing.method is None and "no Full accuracy change was given" in missing.verdict


def test_to_dict_is_plain_json():
    result = recommend({"mmdb": {"full": NEUTRAL_FULL, "worst_group": _pooled(5.0, 4.0, 6.0)},
                        "jtt": {"full": NEUTRAL_FULL, "worst_group": _pooled(0.0, 1.0, -1.0)}})
    d = result.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["method"] == "mmdb" and d["per_method"]["mmdb"]["full_interval"] == [-0.9, 0.2]
    assert d["per_method"]["jtt"]["passes"] is False and d["ranking"] == ["mmdb"]


@pytest.mark.parametrize(("changes", "kwargs", "message"), [
    ({"mmdb": {"full": NEUTRAL_FULL}}, {"primary": "worst"}, "Available: worst-group, bias-balanced, ood, follow-rate"),
    ({"mmdb": {"worst-group": NEUTRAL_FULL}}, {}, "Unknown measure 'worst-group' for method 'mmdb'. Available: full, worst_group, bias_balanced, ood, follow_rate, gap."),
    ({}, {}, "No method to judge"),
    ({"mmdb": {"full": NEUTRAL_FULL}}, {"max_full_drop": -1.0}, "max_full_drop is -1.0"),
    ({"mmdb": {"full": (0.0, 1.0)}}, {}, "expected a PooledChange"),
])
def test_bad_input_is_one_clear_sentence(changes, kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        recommend(changes, **kwargs)
