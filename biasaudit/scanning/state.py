"""What a scan's pass over its batches leaves behind, and how the states of disjoint shards merge.

Every part merges exactly: counts are integers, float sums are exact (biasaudit/_core/exact_sums.py), bounded samples
are the smallest hashes of (seed, index) (embeddings), the fingerprint is an index-keyed sum, the registered
diagnostics merge by their protocol's `merge` (biasaudit/diagnostics/protocol.py), and the gradient-conflict sample is
taken whole by shard 0. So merging the shards of a scan gives, to the last digit,
the state one process reaches, and the audit computed from it is the same.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Sequence

import numpy as np

from biasaudit.scanning.conditions import Condition
from biasaudit.diagnostics.carrier import CarrierAccumulator
from biasaudit.diagnostics.interaction import InteractionAccumulator
from biasaudit.diagnostics.mutes import Moments
from biasaudit.diagnostics.protocol import Diagnostic
from biasaudit.diagnostics.shapley import ShapleyAccumulator
from biasaudit.errors import InputError
from biasaudit.data.fingerprint import SampleFingerprint
from biasaudit.diagnostics.accuracy import ConditionAccumulator


@dataclass
class PassState:
    """The accumulators of one pass (biasaudit/scanning/evaluation.py's BatchEvaluator and its setup.py PassSetup)."""

    accuracy: ConditionAccumulator
    muted_counts: dict[str, int]
    forwards: Counter
    diagnostics: dict[str, Diagnostic] = field(default_factory=dict)  # biasaudit/diagnostics/registry.py, by name
    moments: dict[str, Moments] = field(default_factory=dict)
    carrier: CarrierAccumulator | None = None
    ceilings: ConditionAccumulator | None = None
    shapley: ShapleyAccumulator | None = None
    interaction: InteractionAccumulator | None = None

    @classmethod
    def of(cls, evaluator: Any) -> PassState:
        s = evaluator.setup
        return cls(
            accuracy=evaluator.accuracy,
            muted_counts=evaluator.muted_counts,
            forwards=evaluator.forwards,
            diagnostics=dict(s.diagnostics),
            moments=s.moments,
            carrier=s.carrier,
            ceilings=s.ceilings,
            shapley=s.shapley,
            interaction=s.interaction,
        )

    def merge(self, other: PassState) -> None:
        self.accuracy.merge(other.accuracy)
        if list(self.diagnostics) != list(other.diagnostics):
            raise InputError(
                f"Cannot merge a shard that measured the diagnostics {', '.join(other.diagnostics)} into one that measured "
                f"{', '.join(self.diagnostics)}; expected parts of one scan."
            )
        for name, diagnostic in self.diagnostics.items():
            diagnostic.merge(other.diagnostics[name])
        for name, count in other.muted_counts.items():
            self.muted_counts[name] = self.muted_counts.get(name, 0) + count
        self.forwards.update(other.forwards)
        for key, moments in other.moments.items():
            self.moments.setdefault(key, Moments()).merge(moments)
        for name in ("carrier", "ceilings", "shapley", "interaction"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if (mine is None) != (theirs is None):
                raise InputError(f"Cannot merge shards of which only some measured {name}; expected parts of one scan.")
            if mine is not None:
                mine.merge(theirs)


@dataclass
class ScanState:
    """One shard's (or a merge of shards') main pass, and the whole split's facts every shard read."""

    shards: tuple[int, ...]  # the shard indices merged in
    shard_count: int
    main: PassState
    fingerprint: SampleFingerprint
    samples: int  # evaluated here
    split_samples: int  # in the whole split (every shard reads all of it)
    split_batches: int
    split_fingerprint: dict[str, Any]  # labels and bias values of the whole split, which every shard reads: the same data
    gradient_conflict: dict[str, Any] | None = None  # shard 0 takes the whole seeded sample

    def merge(self, other: ScanState) -> None:
        if other.shard_count != self.shard_count or (other.split_samples, other.split_batches) != (
            self.split_samples,
            self.split_batches,
        ):
            raise InputError(
                f"Cannot merge a shard of {other.shard_count} over a split of {other.split_samples} samples into one of "
                f"{self.shard_count} over {self.split_samples}; expected parts of one scan."
            )
        if other.split_fingerprint != self.split_fingerprint:
            raise InputError(
                "Cannot merge shards that read different data: the split's labels or bias values differ between them (the data "
                "changed between the runs, or the adapter's order is not fixed); expected parts of one scan of the same data."
            )
        overlap = sorted(set(self.shards) & set(other.shards))
        if overlap:
            raise InputError(f"Shard {overlap[0]}/{self.shard_count} is given twice; expected each shard once.")
        self.shards = tuple(sorted(self.shards + other.shards))
        self.main.merge(other.main)
        self.fingerprint.merge(other.fingerprint)
        self.samples += other.samples
        if other.gradient_conflict is not None:
            self.gradient_conflict = other.gradient_conflict

    def check_complete(self) -> None:
        missing = sorted(set(range(self.shard_count)) - set(self.shards))
        if missing:
            given = ", ".join(f"{i}/{self.shard_count}" for i in self.shards)
            raise InputError(
                f"Shard{'s' if len(missing) > 1 else ''} {', '.join(f'{i}/{self.shard_count}' for i in missing)} "
                f"{'are' if len(missing) > 1 else 'is'} missing (parts given: {given}); expected all {self.shard_count}."
            )
        if self.samples != self.split_samples:
            raise InputError(
                f"The parts evaluated {self.samples} samples of a split of {self.split_samples}; expected every sample once."
            )


@dataclass
class ScanContext:
    """What every shard works out identically before its pass and the audit needs after it (the train split's
    priors, the ceilings' probes, ...): kept beside the state, and checked to agree between parts."""

    conditions: list[Condition]
    wanted: tuple[str, ...]
    prior_counts: np.ndarray | None
    train_forwards: int
    ceiling_note: str | None
    ceiling_sources: dict[str, str]
    shapley_note: str | None

    def difference(self, other: ScanContext) -> str | None:
        """What differs between two shards' contexts; None when they agree."""
        if [c.name for c in self.conditions] != [c.name for c in other.conditions] or self.wanted != other.wanted:
            return "their conditions differ"
        mine, theirs = self.prior_counts, other.prior_counts
        if (mine is None) != (theirs is None) or (mine is not None and theirs is not None and not np.array_equal(mine, theirs)):
            return "the train split's label-under-bias counts differ (the data changed between them)"
        if (self.train_forwards, self.ceiling_note, self.ceiling_sources) != (
            other.train_forwards,
            other.ceiling_note,
            other.ceiling_sources,
        ):
            return "their ceilings differ (probe forwards on train, the ceilings' sources or note)"
        if self.shapley_note != other.shapley_note:
            return "their Shapley diagnostics differ"
        return None


def merged(states: Sequence[ScanState]) -> ScanState:
    """The first state with every other merged into it; checks that together they are the whole split."""
    first = states[0]
    for other in states[1:]:
        first.merge(other)
    first.check_complete()
    return first
