"""Which method to recommend, by the do-no-harm rule of methods.md section 8, and why, in words.

A method (never the CE control, which every change is measured against) is recommended only when both hold:
- a bias measure improves: its pooled interval (pooling.py) excludes zero on the good side. Worst-group,
  bias-balanced and OOD accuracy: higher is better; the carrier's bias-follow rate: lower is better. OOD accuracy
  counts only when the evaluation split is out-of-distribution (`ood_split`);
- Full accuracy is non-inferior: the lower end of the pooled interval of its change lies above -max_full_drop
  (default 1 point). A Full change without an interval cannot be shown non-inferior.
Among recommended methods the one with the largest point improvement of the `primary` bias measure wins (a
method without a primary figure falls behind the others; equal figures keep the order the methods were given).

Decisions beyond methods.md, taken here:
- The majority-of-seeds guard: a bias measure counts only when its point change goes the good way on a strict
  majority of seeds. Issue 22 requires that a method made to help on one seed only is never recommended. With 3
  seeds the hierarchical bootstrap already refuses it in practice (the draws that pick only the other two seeds are
  8/27 of all), but with more seeds a strong minority can lift the interval off zero: 10 seeds, 4 at +10 points and
  6 at -0.1, give [0.9, 7.0] points, since the draws that pick only the six null seeds are 0.6^10 = 0.6% of all.
  The guard makes the requirement hold whatever the interval says.
- A bias measure that gets significantly *worse* does not block a recommendation (methods.md names only Full
  accuracy as the harm to rule out), but the method's sentence says so.
- Units: every change is in points, bias-follow rates included (the caller converts fractions).
The words follow from the numbers, in the tone of `compare`: a figure, then its interval in brackets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any
from collections.abc import Mapping

from biasaudit.errors import InputError
from biasaudit.choosing.pooling import PooledChange
from biasaudit.verdict.words import interval, number, one_decimal

FULL = "full"
GAP = "gap"  # the missing-modality Gap: reliance, not bias; accepted so that a runner can pass every measure, never decisive
# measure -> (name in sentences, higher is better); the follow rate's name carries the carrier (see _name). The keys are
# those of measures.py and of compare's JSON; `primary` takes the command line's spelling too (PRIMARY).
BIAS_MEASURES: dict[str, tuple[str, bool]] = {
    "worst_group": ("worst-group accuracy", True),
    "bias_balanced": ("bias-balanced accuracy", True),
    "ood": ("OOD accuracy", True),
    "follow_rate": ("bias-follow rate", False),
}
PRIMARY = {"worst-group": "worst_group", "bias-balanced": "bias_balanced", "ood": "ood", "follow-rate": "follow_rate"}


def _interval(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [float(interval[0]), float(interval[1])]


@dataclass(frozen=True)
class MethodJudgement:
    """One method against the rule. `improved`: bias measures that improved beyond their interval on a majority of
    seeds; `one_sided`: measures whose interval excludes zero on the good side but that improved on too few seeds;
    `worsened`: measures whose interval excludes zero on the bad side. `primary_gain` is the primary measure's point
    change turned so that positive is better (None when not measured); `rank` is 1 for the recommended method,
    2, 3, ... for the other methods that pass the rule, None for those that do not."""

    method: str
    recommended: bool
    improved: tuple[str, ...]
    one_sided: tuple[str, ...]
    worsened: tuple[str, ...]
    full_non_inferior: bool
    full_delta: float | None
    full_interval: tuple[float, float] | None
    primary_gain: float | None
    rank: int | None
    sentence: str

    @property
    def passes(self) -> bool:
        return bool(self.improved) and self.full_non_inferior

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "recommended": self.recommended,
            "passes": self.passes,
            "improved": list(self.improved),
            "one_sided": list(self.one_sided),
            "worsened": list(self.worsened),
            "full_non_inferior": self.full_non_inferior,
            "full_delta": self.full_delta,
            "full_interval": _interval(self.full_interval),
            "primary_gain": self.primary_gain,
            "rank": self.rank,
            "sentence": self.sentence,
        }


@dataclass(frozen=True)
class Recommendation:
    """The leaderboard's answer: `method` (None: no method helps here), the `verdict` line, `reasons` (one sentence
    per method, the recommended one first, then the others that pass by rank, then the rest in the order given),
    `ranking` (the methods that pass, best first) and each method's judgement."""

    method: str | None
    primary: str
    max_full_drop: float
    ood_split: bool
    verdict: str
    reasons: tuple[str, ...]
    ranking: tuple[str, ...]
    per_method: Mapping[str, MethodJudgement]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "primary": self.primary,
            "max_full_drop": self.max_full_drop,
            "ood_split": self.ood_split,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "ranking": list(self.ranking),
            "per_method": {name: j.to_dict() for name, j in self.per_method.items()},
        }


# --- words ------------------------------------------------------------------------------------------------


def _name(measure: str, carrier: str | None) -> str:
    if measure == "follow_rate":
        return f"the {carrier} bias-follow rate" if carrier else "the carrier's bias-follow rate"
    return BIAS_MEASURES[measure][0]


def _figure(change: PooledChange) -> str:
    """'+6.3 [2.1, 10.4] points'; without an interval, why not."""
    if change.delta is None:
        return f"not measured ({change.no_interval})"
    if change.interval is None:
        return f"{number(change.delta, signed=True)} points (no interval: {change.no_interval})"
    return f"{number(change.delta, signed=True)} {interval(change.interval)} points"


def _moved(measure: str, change: PooledChange, carrier: str | None) -> str:
    """'raised worst-group accuracy +6.3 [2.1, 10.4] points'."""
    verb = "raised" if (change.delta or 0) > 0 else "lowered"
    return f"{verb} {_name(measure, carrier)} {_figure(change)}"


def _seed_list(change: PooledChange) -> str:
    return ", ".join(number(d, signed=True) for d in change.seed_deltas)


def _full_clause(full: PooledChange | None, non_inferior: bool, max_full_drop: float, *, after_gain: bool) -> str:
    """How Full accuracy fared; joined to a bias gain with 'and'/'but', else a clause of its own."""
    if full is None or full.delta is None or full.interval is None:
        why = (
            "no Full accuracy change was given"
            if full is None
            else f"its Full accuracy change has no interval ({full.no_interval})"
        )
        return f"{' but' if after_gain else ';'} {why}, so it is not shown to be non-inferior"
    figure = f"({number(full.delta, signed=True)} {interval(full.interval)} points)"
    margin = f"{one_decimal(max_full_drop)}-point"
    if non_inferior:
        return f"{', and' if after_gain else ';'} Full accuracy stayed within the {margin} margin {figure}"
    if full.delta <= -max_full_drop:
        loss = f"cost {number(-full.delta)} points of Full accuracy {figure}, beyond the {margin} margin"
    else:
        loss = f"could not rule out a Full accuracy loss beyond the {margin} margin {figure}"
    return f" but {loss}" if after_gain else f"; it {loss}"


def _sentence(
    method: str,
    changes: Mapping[str, PooledChange],
    counted: tuple[str, ...],
    improved: tuple[str, ...],
    one_sided: tuple[str, ...],
    worsened: tuple[str, ...],
    non_inferior: bool,
    max_full_drop: float,
    carrier: str | None,
) -> str:
    full = changes.get(FULL)
    if improved:
        seeds = [
            f"better on {changes[m].seeds_moving(higher_is_better=BIAS_MEASURES[m][1])} of {len(changes[m].seeds)} seeds"
            for m in improved
        ]
        text = (
            method + " " + " and ".join(f"{_moved(m, changes[m], carrier)} ({s})" for m, s in zip(improved, seeds, strict=True))
        )
        text += _full_clause(full, non_inferior, max_full_drop, after_gain=True)
    elif one_sided:
        m = one_sided[0]
        c = changes[m]
        text = (
            f"{method} {_moved(m, c, carrier)} but on only {c.seeds_moving(higher_is_better=BIAS_MEASURES[m][1])} of "
            f"{len(c.seeds)} seeds (seed changes {_seed_list(c)}): not a consistent gain"
        )
        text += _full_clause(full, non_inferior, max_full_drop, after_gain=False)
    else:
        measured = [m for m in counted if m in changes and m not in worsened]
        if measured:
            text = (
                f"{method} moved no bias measure beyond noise ("
                + "; ".join(f"{_name(m, carrier)} {_figure(changes[m])}" for m in measured)
                + ")"
            )
        elif worsened:
            text = f"{method} improved no bias measure"
        elif "ood" in changes:  # given, but not counted: the split is not out-of-distribution
            text = f"{method} has no bias measure to judge (OOD accuracy counts only on an out-of-distribution split)"
        else:
            text = f"{method} has no bias measure to judge (none was given)"
        text += _full_clause(full, non_inferior, max_full_drop, after_gain=False)
    if worsened:
        text += "; it also " + " and ".join(_moved(m, changes[m], carrier) for m in worsened)
    return text + "."  # opens with the method's name, an identifier: kept as given, never capitalised


# --- the rule ---------------------------------------------------------------------------------------------


def _check(changes: Mapping[str, Mapping[str, PooledChange]], primary: str, max_full_drop: float, ood_split: bool) -> None:
    if primary not in BIAS_MEASURES:
        raise InputError(f"Unknown primary bias measure {primary!r}. Available: {', '.join(PRIMARY)}.")
    if primary == "ood" and not ood_split:
        raise InputError(
            "The primary bias measure is 'ood' but the evaluation split is not out-of-distribution; "
            "choose worst-group, bias-balanced or follow-rate, or evaluate on an OOD split."
        )
    if (
        isinstance(max_full_drop, bool)
        or not isinstance(max_full_drop, (int, float))
        or not math.isfinite(max_full_drop)
        or max_full_drop < 0
    ):
        raise InputError(f"max_full_drop is {max_full_drop!r}; expected a non-negative number of points.")
    if not changes:
        raise InputError("No method to judge; expected the changes of at least one method against the control.")
    known = (FULL, *BIAS_MEASURES, GAP)
    for method, measures in changes.items():
        for measure, change in measures.items():
            if measure not in known:
                raise InputError(f"Unknown measure {measure!r} for method {method!r}. Available: {', '.join(known)}.")
            if not isinstance(change, PooledChange):
                raise InputError(
                    f"The {measure} change of method {method!r} is a {type(change).__name__}; expected a PooledChange."
                )


def _judge(
    method: str, changes: Mapping[str, PooledChange], primary: str, max_full_drop: float, ood_split: bool, carrier: str | None
) -> MethodJudgement:
    counted = tuple(m for m in BIAS_MEASURES if m in changes and (m != "ood" or ood_split))
    improved, one_sided, worsened = [], [], []
    for m in counted:
        c, higher = changes[m], BIAS_MEASURES[m][1]
        if c.interval is None or not c.significant:  # significant: an interval that excludes 0
            continue
        good = c.interval[0] > 0 if higher else c.interval[1] < 0
        if not good:
            worsened.append(m)
        elif c.seeds_moving(higher_is_better=higher) * 2 > len(c.seeds):  # the majority-of-seeds guard
            improved.append(m)
        else:
            one_sided.append(m)
    full = changes.get(FULL)
    non_inferior = bool(full is not None and full.interval is not None and full.interval[0] > -max_full_drop)
    p = changes.get(primary) if primary in counted else None
    gain = None if p is None or p.delta is None else (p.delta if BIAS_MEASURES[primary][1] else -p.delta)
    sentence = _sentence(
        method, changes, counted, tuple(improved), tuple(one_sided), tuple(worsened), non_inferior, float(max_full_drop), carrier
    )
    return MethodJudgement(
        method=method,
        recommended=False,
        improved=tuple(improved),
        one_sided=tuple(one_sided),
        worsened=tuple(worsened),
        full_non_inferior=non_inferior,
        full_delta=None if full is None else full.delta,
        full_interval=None if full is None else full.interval,
        primary_gain=gain,
        rank=None,
        sentence=sentence,
    )


def recommend(
    changes: Mapping[str, Mapping[str, PooledChange]],
    *,
    primary: str = "worst-group",
    max_full_drop: float = 1.0,
    ood_split: bool = False,
    carrier: str | None = None,
) -> Recommendation:
    """Judge every method by the rule of the module docstring and name the one to use, or say that none helps.

    `changes`: method -> measure -> its pooled change against the control, in points. Measures: `full` and any of
    `worst_group`, `bias_balanced`, `ood` (counted only with `ood_split`), `follow_rate` (the carrier's excess
    bias-follow rate; `carrier` names its modality in the sentences) and `gap` (reliance: accepted, never decisive).
    `primary` is spelt as on the command line (worst-group, bias-balanced, ood, follow-rate) or as a measure key;
    the result names it the command line's way. On an OOD split OOD accuracy is the Full accuracy of that split,
    so a method that improves it is non-inferior on Full by the same figures."""
    key = PRIMARY.get(primary, primary)
    _check(changes, key, max_full_drop, ood_split)
    primary = next(name for name, k in PRIMARY.items() if k == key)
    judged = {method: _judge(method, measures, key, max_full_drop, ood_split, carrier) for method, measures in changes.items()}
    # Stable sort: equal primary gains keep the order given; a method without a primary figure comes last.
    ranking = tuple(
        sorted(
            (m for m, j in judged.items() if j.passes),
            key=lambda m: (judged[m].primary_gain is None, -(judged[m].primary_gain or 0.0)),
        )
    )
    for rank, method in enumerate(ranking, start=1):
        j = judged[method]
        judged[method] = replace(j, rank=rank, recommended=rank == 1)
    order = [*ranking, *(m for m in judged if m not in ranking)]
    reasons = tuple(judged[m].sentence for m in order)
    primary_name = _name(key, carrier)
    if ranking:
        best = judged[ranking[0]]
        verdict = f"Recommended: {best.method}. {best.sentence}"
        if len(ranking) > 1:

            def figure(j: MethodJudgement) -> str:
                return "n/a" if j.primary_gain is None else number(changes[j.method][key].delta, signed=True)

            others = ", ".join(f"{m} {figure(judged[m])}" for m in ranking[1:])
            verdict += (
                f" Chosen over {', '.join(ranking[1:])}, which also pass the rule, by {primary_name}, the primary measure "
                f"(point changes {best.method} {figure(best)}, {others} points)."
            )
    else:
        verdict = "No method helps here: " + " ".join(judged[m].sentence for m in order)
    return Recommendation(
        method=ranking[0] if ranking else None,
        primary=primary,
        max_full_drop=float(max_full_drop),
        ood_split=bool(ood_split),
        verdict=verdict,
        reasons=reasons,
        ranking=ranking,
        per_method=judged,
    )
