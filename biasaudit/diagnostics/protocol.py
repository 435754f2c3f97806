"""The one protocol every per-batch diagnostic of a scan follows, and the values the scan hands it.

A diagnostic is created once per pass from the pass's facts (PassFacts: its conditions, the classes, the train split's
label-under-bias prior, the settings), is fed one BatchOutcome per batch the pass evaluates (`update`), takes in the
state of another shard of the same scan (`merge`, exact: shards merge to the digit), and turns into its section of the
audit once every shard is merged in (`compute`, from the FinishContext). `reset` empties it to its just-created state.

Its state is what a scan part stores (biasaudit/scanning/parts.py): plain values (numbers, strings, numpy arrays,
lists, dicts) and objects of the classes it names in `part_classes`, which a merge rebuilds without running code from
the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable
from collections.abc import Mapping, Sequence

import numpy as np
import torch

if TYPE_CHECKING:  # jsd.py's diagnostic follows this protocol: a load-time import would be a cycle
    from biasaudit.diagnostics.jsd import BiasPrior


@dataclass(frozen=True)
class PassFacts:
    """What a diagnostic is sized by, known before the pass reads its first batch."""

    conditions: tuple[str, ...]  # the pass's condition names, every draw of a random condition under its own name
    num_classes: int
    prior: BiasPrior | None  # the label-under-bias counts of train (or of the k-means bias values); None without them
    config: Any  # the scan's ScanConfig (biasaudit/scanning/config.py), one layer up


@dataclass(frozen=True)
class BatchOutcome:
    """One batch of the pass, every condition evaluated: filled once by the scan and read by every diagnostic."""

    indices: np.ndarray  # [B] global sample indices of the split
    labels: np.ndarray  # [B]
    bias: np.ndarray | None  # [B] bias values; None when the data has none
    weights: np.ndarray  # [B, R] the batch's Poisson bootstrap weights, shared by every accumulator (paired intervals)
    predictions: Mapping[str, np.ndarray]  # condition -> [B] predicted class
    confidences: Mapping[str, np.ndarray]  # condition -> [B] largest softmax probability
    full_logits: torch.Tensor  # [B, C] the Full condition's logits, on the model's device
    features: torch.Tensor | None  # [B, ...] the fused feature (the classifier's input) under Full; None without the hook


@dataclass(frozen=True)
class FinishContext:
    """What computing a section may read besides the diagnostic's own state: the whole scan, merged."""

    config: Any  # the scan's ScanConfig
    num_classes: int
    class_names: Sequence[str]
    bias_names: Sequence[str] | None  # the adapter's names of its bias values
    condition_groups: Mapping[str, str]  # condition name -> group (full, missing, noisy, ratio, ...), draws combined
    prior_counts: np.ndarray | None  # [K, C] label-under-bias counts in effect (train's, or of the k-means bias values)
    bias_source: str  # "bias_key" (the data's bias values) or "kmeans" (discovered ones)
    bias_note: str | None  # why groups are limited or missing, when they are
    prior_note: str | None  # how the priors were found (k-means), or why there are none
    draw_groups: Mapping[str, Sequence[str]]  # base condition -> the names of its draws (biasaudit/scanning/draws.py)
    multiplicities: np.ndarray | None  # [R, draws] how often each draw is picked per replicate; None without draws
    dominant: str | None  # the modality whose absence flips the most predictions


@dataclass(frozen=True)
class Section:
    """A diagnostic's part of the audit: its section, the per-replicate figures compare pairs up (bootstrap.derived),
    and the sentences it adds to the audit's notes."""

    body: dict[str, Any]
    derived: Mapping[str, np.ndarray] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@runtime_checkable
class Diagnostic(Protocol):
    part_classes: ClassVar[tuple[type, ...]]  # classes of the objects its state holds, rebuilt from a part file

    def __init__(self, facts: PassFacts) -> None: ...

    def update(self, outcome: BatchOutcome) -> None: ...

    def merge(self, other: Any) -> None: ...

    def compute(self, context: FinishContext) -> Section: ...

    def reset(self) -> None: ...


def unavailable(note: str) -> dict[str, Any]:
    """The section of a diagnostic that could not run, and why (never a crash)."""
    return {"available": False, "note": note}


def own_draws(context: FinishContext, names: Sequence[str]) -> dict[str, Sequence[str]]:
    """The draw groups among `names` (a pass without random conditions has none)."""
    return {base: draws for base, draws in context.draw_groups.items() if base in names}
