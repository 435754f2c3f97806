"""Independent draws of a scan's random conditions (`--draws R`; methods.md section 10, issue 19).

A noisy condition, a ratio rung's muted subset and a ceiling probe's training sample are each one seeded draw.
The bootstrap over samples covers the samples, not the draw: a seed whose noise happens to hurt more than
most reads as the model's figure, with an interval that leaves the draw out. With R draws every random
condition is evaluated R times, draw d with the random streams of seed + d (draw 0 is the single-draw scan,
so `--draws 1` changes nothing), and the audit reports the mean over draws under the condition's own name.

Intervals resample the draws as well as the samples: replicate r takes the samples' Poisson weights, as every
accuracy of the scan does, and D draws picked with replacement from the R (multiplicities m_rd, a multinomial
of (R; 1/R, ...) keyed by (seed, r)), so replicate r of a combined condition scores
sum_d m_rd correct_rd / (R total_r). Everything stays an integer count: shards still merge exactly (draws
are combined once, after the merge) and two audits with the same seed and R draw the same m, so their
replicates pair up.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from biasaudit.scanning.conditions import Condition
from biasaudit.data.impairments import Impairment
from biasaudit._core.randomness import uniform

# The name of draw d >= 1 of a condition inside the pass; never in an audit.
_DRAW_MARK = "#draw"


def draw_seed(seed: int, draw: int) -> int:
    """The seed of draw d's random streams: seed + d (so draw d of seed s is draw 0, the single-draw scan, of seed s + d)."""
    return (seed + draw) % 2**64


def draw_name(name: str, draw: int) -> str:
    return name if draw == 0 else f"{name}{_DRAW_MARK}{draw}"


def is_random(condition: Condition, impairment: Impairment | None) -> bool:
    """Noise at any severity, or a mute of a random fraction of the samples; a whole mute and Full are fixed."""
    if impairment is None or condition.group == "full":
        return False
    return not impairment.mutes or 0.0 < condition.severity < 1.0


def with_draws(conditions: Sequence[Condition], impairments: Mapping[str, Impairment], draws: int) -> list[Condition]:
    """Every random condition followed by its draws 1 .. R-1 (same definition, another draw)."""
    out = []
    for condition in conditions:
        out.append(condition)
        if draws > 1 and is_random(condition, impairments.get(condition.name)):
            out.extend(
                Condition(
                    draw_name(condition.name, d),
                    condition.group,
                    condition.modality,
                    condition.impairment,
                    condition.severity,
                    draw=d,
                )
                for d in range(1, draws)
            )
    return out


def base_name(name: str) -> str:
    """The condition a draw belongs to: its own name for draw 0."""
    return name.split(_DRAW_MARK)[0]


def draw_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Base name -> the names of all its draws (draw 0 first), for the names (conditions, ceiling rows) that have several."""
    groups: dict[str, list[str]] = {}
    for name in names:
        if base_name(name) != name:
            groups.setdefault(base_name(name), [base_name(name)]).append(name)
    return groups


def draw_multiplicities(seed: int, replicates: int, draws: int) -> np.ndarray:
    """[replicates, draws] int64: how often each draw is picked in each bootstrap replicate (R picks with replacement;
    every row sums to R)."""
    keys = np.arange(replicates * draws, dtype=np.int64)
    picks = np.minimum((uniform(seed, "draw-resample", keys) * draws).astype(np.int64), draws - 1).reshape(replicates, draws)
    return np.stack([np.bincount(row, minlength=draws) for row in picks]).astype(np.int64)


def combined_counts(accumulator: Any, *, seed: int) -> Any:
    """A ConditionAccumulator (the conditions', or the ceilings') with each row's draws summed into the row; itself when
    none has draws."""
    groups = draw_groups(accumulator.condition_names)
    if not groups:
        return accumulator
    return accumulator.combined_draws(groups, draw_multiplicities(seed, accumulator.replicates, len(next(iter(groups.values())))))


def pass_multiplicities(state: Any, *, seed: int) -> np.ndarray | None:
    """The draw multiplicities of a pass state (biasaudit/scanning/state.py PassState): the same picks serve its accuracy
    and every diagnostic that combines draws (biasaudit/diagnostics/protocol.py FinishContext); None without draws."""
    groups = draw_groups(state.accuracy.condition_names)
    return draw_multiplicities(seed, state.accuracy.replicates, len(next(iter(groups.values())))) if groups else None


def combined_pass(state: Any, *, picks: np.ndarray | None) -> Any:
    """A pass state whose accuracy and ratio counts hold each random condition once, summed over its draws, under its own
    name; unchanged when no condition has draws. The registered diagnostics combine their own draws as they compute."""
    groups = draw_groups(state.accuracy.condition_names)
    if not groups:
        return state
    muted = {
        name: sum(state.muted_counts.get(d, 0) for d in groups.get(name, [name]))
        for name in state.muted_counts
        if base_name(name) == name
    }
    return replace(state, accuracy=state.accuracy.combined_draws(groups, picks), muted_counts=muted)
