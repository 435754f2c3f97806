"""One method's change against the CE control, pooled over training seeds by a hierarchical bootstrap.

Input, per seed s = 1..S: the paired change of one measure against the control trained with the *same* seed,
a point estimate d_s (after_method - after_control, in points) and its R paired bootstrap replicates d_s[r]
(the sample bootstrap of methods.md section 2: the same resampled samples for method and control, NaN where a
replicate could not be computed). Output: the pooled change, mean_s d_s, with a 95% percentile interval.

The hierarchical bootstrap (two-stage resampling, seeds then samples; Davison & Hinkley 1997, section 3.8).
For b = 1..B (B = R by default):
  1. draw S seeds with replacement from the S seeds (training randomness);
  2. for each drawn seed, draw one of its finite replicates at random, with replacement (sampling noise);
  3. the pooled replicate is the mean of the S drawn replicates.
The interval is the 2.5 and 97.5 percentiles of the B pooled replicates.

Why both stages. The paired replicates of one seed only say how much the change would move had other samples
been audited: they know nothing of training randomness (initialisation, data order, dropout). Fine-tuning the
do-nothing control with seeds 0, 1 and 2 gave three confident, opposite verdicts (issue 22), so an interval from
one seed's replicates alone is too narrow for a claim about a *method*. Resampling the seeds puts the spread
between seeds into the interval; drawing a replicate within each drawn seed keeps the sampling noise of the
audited samples. Each seed's point change already carries some sampling noise, so the two stages count it a
little twice and the interval leans wide: the safe side for a recommendation.

What 3 seeds mean. Seed resampling is coarse with few seeds: 3 seeds give only 10 distinct multisets, and the
draw "the same seed three times" has probability 1/27 = 3.7% for each seed, more than the 2.5% in each tail. So
the interval reaches roughly from the lowest seed's change to the highest seed's (widened by their sampling
noise): it excludes zero only when *every* seed moved the same way beyond its own noise. For the user: the
interval is honest but wide; a method that helps on average but not on every seed will not be significant with
3 seeds, and more seeds (5 or more: one seed drawn five times has probability 1/3125) give a sharper answer.

Draws come from a numpy Generator seeded by `seed` (never the global random state), and the same draws (seed
indices and uniform numbers, each mapped onto the finite replicates of the drawn seed) serve every call with the
same seed, S and B: with all replicates finite, the pooled replicates of different measures and methods are
paired with each other, as the per-seed replicates are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypedDict, cast
from collections.abc import Mapping, Sequence

import numpy as np

from biasaudit.errors import InputError
from biasaudit.diagnostics.accuracy import percentile_interval


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _interval(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [float(interval[0]), float(interval[1])]


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare the fields with numpy
class SeedChange:
    """One training seed's paired change of one measure against the control of the same seed, in points.

    `delta`: after_method - after_control (None or NaN: not measured on this seed); `replicates`: the R per-replicate
    changes of the paired sample bootstrap, NaN where a replicate could not be computed (None: the audits kept none)."""

    seed: int
    delta: float | None
    replicates: np.ndarray | None = field(repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise InputError(f"SeedChange.seed is {self.seed!r}; expected the integer training seed.")
        if self.delta is not None and (
            isinstance(self.delta, bool) or not isinstance(self.delta, (int, float, np.floating, np.integer))
        ):
            raise InputError(f"SeedChange.delta of seed {self.seed} is {self.delta!r}; expected a number in points or None.")
        try:
            values = np.array([] if self.replicates is None else self.replicates, dtype=np.float64)  # a copy: theirs stays theirs
        except (TypeError, ValueError):
            raise InputError(
                f"SeedChange.replicates of seed {self.seed} is not an array of numbers; "
                "expected one change per bootstrap replicate (NaN where none)."
            ) from None
        if values.ndim != 1:
            raise InputError(f"SeedChange.replicates of seed {self.seed} has shape {values.shape}; expected one dimension [R].")
        values.setflags(write=False)
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "delta", _number(None if self.delta is None else float(self.delta)))
        object.__setattr__(self, "replicates", values)

    @property
    def replicate_array(self) -> np.ndarray:
        """`replicates` as __post_init__ keeps them: a read-only float array, empty where None was given."""
        # The field's type is the constructor's, which takes None; __post_init__ stores an array in every case.
        return cast(np.ndarray, self.replicates)


@dataclass(frozen=True)
class PooledChange:
    """A measure's change against the control pooled over seeds (module docstring), in points.

    `delta` is the mean of the seeds' point changes (None when a seed lacks one); `interval` the 95% percentile
    interval of the hierarchical bootstrap (None, with `no_interval`, when it cannot be formed); `significant` is
    True exactly when the interval excludes 0 (either side: which side is good is the rule's business).
    `seed_deltas`/`seed_intervals` are each seed's own change and sample-bootstrap interval, in the order of `seeds`;
    `seed_spread` their standard deviation (ddof=1; None with one seed), `seed_min`/`seed_max` their range."""

    delta: float | None
    interval: tuple[float, float] | None
    no_interval: str | None
    seeds: tuple[int, ...]
    seed_deltas: tuple[float | None, ...]
    seed_intervals: tuple[tuple[float, float] | None, ...]
    seed_spread: float | None
    seed_min: float | None
    seed_max: float | None
    draws: int

    @property
    def significant(self) -> bool:
        return self.interval is not None and (self.interval[0] > 0 or self.interval[1] < 0)

    def seeds_moving(self, *, higher_is_better: bool) -> int:
        """How many seeds' point changes went the good way (strictly)."""
        sign = 1.0 if higher_is_better else -1.0
        return sum(1 for d in self.seed_deltas if d is not None and sign * d > 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "delta": self.delta,
            "interval": _interval(self.interval),
            "no_interval": self.no_interval,
            "significant": self.significant,
            "seeds": list(self.seeds),
            "seed_deltas": list(self.seed_deltas),
            "seed_intervals": [_interval(i) for i in self.seed_intervals],
            "seed_spread": self.seed_spread,
            "seed_min": self.seed_min,
            "seed_max": self.seed_max,
            "draws": self.draws,
        }


class _SeedSummary(TypedDict):
    """The PooledChange fields that describe the seeds, whatever the pooling gives."""

    seeds: tuple[int, ...]
    seed_deltas: tuple[float | None, ...]
    seed_intervals: tuple[tuple[float, float] | None, ...]
    seed_spread: float | None
    seed_min: float | None
    seed_max: float | None


def _check_seeds(changes: Sequence[SeedChange]) -> int:
    """The shared replicate count R; refuses no seed, a seed given twice, and seeds with different R."""
    if not changes:
        raise InputError("No seed to pool; expected one SeedChange per training seed.")
    if not all(isinstance(c, SeedChange) for c in changes):
        raise InputError("pool_change expects SeedChange objects, one per training seed.")
    seeds = [c.seed for c in changes]
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise InputError(f"Seed {twice[0]} is given twice; expected one change per training seed.")
    counts = {c.seed: c.replicate_array.size for c in changes if c.replicate_array.size}  # a seed without replicates: no interval
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"seed {s}: {n}" for s, n in counts.items())
        raise InputError(
            f"The seeds have different replicate counts ({detail}); expected audits with the same --bootstrap count."
        )
    return next(iter(counts.values()), 0)


def pool_change(changes: Sequence[SeedChange], *, seed: int = 0, draws: int | None = None) -> PooledChange:
    """Pool one measure's per-seed changes by the hierarchical bootstrap of the module docstring.

    `seed` seeds the bootstrap's own Generator; `draws` is B, the number of pooled replicates (default R)."""
    changes = tuple(changes)
    replicates = _check_seeds(changes)
    if draws is not None and (isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1):
        raise InputError(f"draws is {draws!r}; expected a positive number of pooled bootstrap replicates.")
    b = replicates if draws is None else int(draws)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed is {seed!r}; expected a non-negative integer.")
    deltas = tuple(c.delta for c in changes)
    finite = [c.replicate_array[np.isfinite(c.replicate_array)] for c in changes]
    measured = [d for d in deltas if d is not None]
    spread = float(np.std(measured, ddof=1)) if len(measured) == len(deltas) > 1 else None
    common = _SeedSummary(
        seeds=tuple(c.seed for c in changes),
        seed_deltas=deltas,
        seed_intervals=tuple(percentile_interval(f) if f.size else None for f in finite),
        seed_spread=spread,
        seed_min=min(measured) if measured else None,
        seed_max=max(measured) if measured else None,
    )
    unmeasured = [c.seed for c in changes if c.delta is None]
    if unmeasured:
        return PooledChange(
            delta=None,
            interval=None,
            draws=0,
            **common,
            no_interval=f"seed {unmeasured[0]} has no point estimate of this change, so it cannot be pooled",
        )
    delta = math.fsum(measured) / len(measured)  # exact sum: the point does not depend on the order of the seeds
    empty = [c.seed for c, f in zip(changes, finite, strict=True) if f.size == 0]
    if empty:
        lacking = next(c for c in changes if c.seed == empty[0])
        why = (
            "kept no bootstrap replicates"
            if lacking.replicate_array.size == 0
            else "has no finite bootstrap replicate of this change"
        )
        return PooledChange(delta=delta, interval=None, draws=0, **common, no_interval=f"seed {empty[0]} {why}")
    rng = np.random.default_rng(int(seed))
    picked = rng.integers(0, len(changes), size=(b, len(changes)))  # stage 1: seeds, with replacement
    uniform = rng.random((b, len(changes)))  # stage 2: one finite replicate of each drawn seed, with replacement
    sizes = np.array([f.size for f in finite])
    padded = np.full((len(changes), max(sizes)), np.nan)
    for row, values in enumerate(finite):
        padded[row, : values.size] = values
    which = np.minimum((uniform * sizes[picked]).astype(np.int64), sizes[picked] - 1)
    pooled = padded[picked, which].mean(axis=1)
    return PooledChange(delta=delta, interval=percentile_interval(pooled), no_interval=None, draws=int(b), **common)


def pool_changes(
    per_measure: Mapping[str, Sequence[SeedChange]], *, seed: int = 0, draws: int | None = None
) -> dict[str, PooledChange]:
    """`pool_change` for each measure of one method, all with the same `seed`, so their pooled replicates share the
    same draws of seeds and replicates (module docstring)."""
    return {name: pool_change(changes, seed=seed, draws=draws) for name, changes in per_measure.items()}
