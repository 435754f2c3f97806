"""Gradient conflict of a fixed checkpoint (methods.md section 5, the scan part).

For a few batches and each modality m, g_m is the gradient of the cross-entropy loss when only m is
intact (every other modality muted with its `zero`/`empty` impairment), taken w.r.t. the parameters
all modalities share. Negative cos(g_a, g_b) means that learning from a alone would undo some of
what learning from b alone does: the modalities pull the shared fusion and classifier apart.

Which parameters are shared:
  1. Parameters of the adapter's `branches()` modules, when it has that hook, belong to one
     modality and are never shared.
  2. Of the remaining trainable parameters (requires_grad=True; frozen ones are ignored), those
     that get a non-zero gradient in *every* modality's pass on the first batch are shared.
Without the hook, rule 2 alone decides, and it is generous: a muted branch still feeds its biases
(and any layer after its first) to the output, so those get gradient in the other modality's pass
and count as shared. Adapters that have per-modality branches should name them.

The model runs in eval() mode (no dropout, no batch-norm statistics updated); the train/eval state
of every submodule is restored afterwards. Gradients come from torch.autograd.grad, so no `.grad`
is ever written and the weights are never touched.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biasaudit.data.adapter import Adapter, Modality
from biasaudit.data.adapter import optional_hook
from biasaudit.errors import ConditionError
from biasaudit.data.impairments import impair_batch, muting_impairment
from biasaudit._core.randomness import hash64

HISTOGRAM_EDGES = np.linspace(-1.0, 1.0, 21)
_TAG = "gradient-conflict"


@dataclass(frozen=True)
class PairConflict:
    """Per-batch cos(g_a, g_b) and ||g_a||/||g_b|| for one pair of modalities."""

    a: str
    b: str
    cosines: tuple[float, ...]
    norm_ratios: tuple[float, ...]
    n_undefined_batches: int = 0  # batches where g_a or g_b was exactly zero (no angle)

    def to_dict(self) -> dict[str, Any]:
        cosines = np.clip(np.asarray(self.cosines, dtype=np.float64), -1.0, 1.0)
        counts, _ = np.histogram(cosines, bins=HISTOGRAM_EDGES)
        return {
            "a": self.a,
            "b": self.b,
            "cosines": [float(c) for c in self.cosines],
            "norm_ratios": [float(r) for r in self.norm_ratios],
            "fraction_negative": float(np.mean(cosines < 0)) if cosines.size else None,
            "mean_cosine": float(cosines.mean()) if cosines.size else None,
            "histogram": {"edges": [float(e) for e in HISTOGRAM_EDGES], "counts": [int(c) for c in counts]},
            "n_undefined_batches": self.n_undefined_batches,
        }


@dataclass(frozen=True)
class GradientConflict:
    available: bool
    note: str | None = None
    pairs: tuple[PairConflict, ...] = ()
    n_batches: int = 0
    n_shared_parameters: int = 0  # scalar parameters
    shared_parameter_names: tuple[str, ...] = ()
    shared_rule: str = "automatic"  # "automatic" or "automatic, excluding adapter branches()"
    modalities: tuple[str, ...] = field(default_factory=tuple)
    batch_ordinals: tuple[int, ...] = ()  # which batches of the split were sampled (0 = the first)

    def to_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "note": self.note,
            "pairs": [pair.to_dict() for pair in self.pairs],
            "n_batches": self.n_batches,
            "batch_ordinals": list(self.batch_ordinals),
            "n_shared_parameters": self.n_shared_parameters,
            "shared_parameter_names": list(self.shared_parameter_names),
            "shared_rule": self.shared_rule,
            "modalities": list(self.modalities),
        }


def _only_intact(
    batch: Mapping[str, Any], keep: Modality, modalities: Sequence[Modality], *, indices: np.ndarray, seed: int
) -> dict[str, Any]:
    out = dict(batch)
    for other in modalities:
        if other.name != keep.name:
            impairment = muting_impairment(other)
            out = impair_batch(out, other, impairment, 1.0, indices=indices, seed=seed, tag=_TAG)
    return out


def _loss_gradients(
    model: nn.Module, adapter: Adapter, batch: Mapping[str, Any], params: Sequence[torch.Tensor], *, device: torch.device
) -> list[torch.Tensor | None]:
    logits = adapter.forward(model, adapter.prepare(batch, device=device))
    labels = torch.as_tensor(batch[adapter.label_key]).to(device=logits.device, dtype=torch.long)
    loss = F.cross_entropy(logits.float(), labels)
    if not loss.requires_grad:
        return [None] * len(params)
    return list(torch.autograd.grad(loss, list(params), allow_unused=True))


def _branch_parameter_ids(adapter: Adapter, model: nn.Module) -> set[int]:
    branches = optional_hook(adapter, "branches", model) or {}
    return {id(p) for module in branches.values() for p in module.parameters()}


def _unavailable(note: str, modalities: Sequence[Modality], rule: str, n_batches: int = 0) -> GradientConflict:
    return GradientConflict(
        available=False, note=note, n_batches=n_batches, shared_rule=rule, modalities=tuple(m.name for m in modalities)
    )


def _nonzero(grad: torch.Tensor | None) -> bool:
    return grad is not None and bool(torch.any(grad != 0))


class SeededSample:
    """The k batches of a whole split with the smallest hash of (seed, batch ordinal), offered one by one in split
    order: at most k are kept. Keeping the smallest hashes over every batch means a loader sorted by label gives
    batches from across the split, not k batches of its first labels (methods.md section 5); and it can be filled
    while the scan's pass reads the split anyway, instead of by a read of its own."""

    def __init__(self, *, k: int, seed: int) -> None:
        self.k, self.seed = k, seed
        self._kept: list[tuple[int, int, Any]] = []

    def offer(self, ordinal: int, item: Any) -> None:
        self._kept.append((int(hash64(self.seed, "gradient-batches", ordinal)), ordinal, item))
        self._kept.sort(key=lambda entry: entry[:2])
        del self._kept[self.k :]

    def chosen(self) -> list[tuple[int, Any]]:
        """(ordinal, item) of the kept batches, in split order."""
        return [(ordinal, item) for _, ordinal, item in sorted(self._kept, key=lambda entry: entry[1])]


def gradient_conflict(
    model: nn.Module,
    adapter: Adapter,
    sample: Iterable[tuple[int, tuple[np.ndarray, Mapping[str, Any]]]],
    *,
    device: torch.device | str,
    seed: int = 0,
) -> GradientConflict:
    """Per-batch cosines and norm ratios of the single-modality gradients on the shared parameters, on a seeded
    sample of the split's batches: the (ordinal, (indices, batch)) pairs of SeededSample.chosen()."""
    modalities = list(adapter.modalities)
    device = torch.device(device)
    branch_ids = _branch_parameter_ids(adapter, model)
    rule = "automatic, excluding adapter branches()" if branch_ids else "automatic"
    unmutable = []
    for modality in modalities:
        try:
            muting_impairment(modality)
        except ConditionError:
            unmutable.append(modality.name)
    if unmutable:
        return _unavailable(
            f"Modalities {', '.join(unmutable)} have no muting impairment, so single-modality gradients "
            "cannot be formed; the gradient-conflict diagnostic is skipped.",
            modalities,
            rule,
        )
    candidates = [(name, p) for name, p in model.named_parameters() if p.requires_grad and id(p) not in branch_ids]
    if not candidates:
        return _unavailable(
            "The model has no trainable parameter outside the modality branches, so there is nothing shared "
            "to measure gradient conflict on.",
            modalities,
            rule,
        )
    names, params = [n for n, _ in candidates], [p for _, p in candidates]
    states = {module: module.training for module in model.modules()}
    shared: list[int] | None = None
    cosines: dict[tuple[int, int], list[float]] = {pair: [] for pair in itertools.combinations(range(len(modalities)), 2)}
    ratios: dict[tuple[int, int], list[float]] = {pair: [] for pair in cosines}
    undefined = dict.fromkeys(cosines, 0)
    n_batches = 0
    model.eval()
    try:
        with torch.enable_grad():
            ordinals = []
            for ordinal, (indices, batch) in sample:
                ordinals.append(ordinal)
                indices = np.asarray(indices)
                grads = [
                    _loss_gradients(
                        model, adapter, _only_intact(batch, m, modalities, indices=indices, seed=seed), params, device=device
                    )
                    for m in modalities
                ]
                if shared is None:
                    shared = [i for i in range(len(params)) if all(_nonzero(g[i]) for g in grads)]
                    if not shared:
                        break
                n_batches += 1
                _add_batch(grads, shared, params, cosines, ratios, undefined)
    finally:
        for module, training in states.items():
            module.train(training)
    if shared is None:
        return _unavailable("No batches were available for the gradient-conflict sample.", modalities, rule)
    if not shared:
        return _unavailable(
            "No trainable parameter receives gradient from every modality on its own (each modality feeds "
            "only its own parameters), so there is no shared gradient to compare.",
            modalities,
            rule,
            1,
        )
    pairs = tuple(
        PairConflict(modalities[i].name, modalities[j].name, tuple(cosines[(i, j)]), tuple(ratios[(i, j)]), undefined[(i, j)])
        for (i, j) in cosines
    )
    return GradientConflict(
        available=True,
        pairs=pairs,
        n_batches=n_batches,
        n_shared_parameters=int(sum(params[i].numel() for i in shared)),
        shared_parameter_names=tuple(names[i] for i in shared),
        shared_rule=rule,
        modalities=tuple(m.name for m in modalities),
        batch_ordinals=tuple(ordinals[:n_batches]),
    )


def _add_batch(
    grads: list[list[torch.Tensor | None]],
    shared: list[int],
    params: Sequence[torch.Tensor],
    cosines: dict,
    ratios: dict,
    undefined: dict,
) -> None:
    # Missing gradients (a shared parameter unused in this batch's pass) count as zeros.
    def dense(g: torch.Tensor | None, i: int) -> torch.Tensor:
        return (g if g is not None else torch.zeros_like(params[i])).detach().double().reshape(-1)

    vectors = [[dense(g[i], i) for i in shared] for g in grads]
    norms = [float(sum(torch.dot(v, v) for v in vs)) ** 0.5 for vs in vectors]
    for a, b in cosines:
        if norms[a] == 0.0 or norms[b] == 0.0:
            undefined[(a, b)] += 1
            continue
        dot = float(sum(torch.dot(u, v) for u, v in zip(vectors[a], vectors[b], strict=True)))
        cosines[(a, b)].append(dot / (norms[a] * norms[b]))
        ratios[(a, b)].append(norms[a] / norms[b])
