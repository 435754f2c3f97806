"""The scan's main pass over this process's shard of the batches: every condition on every batch, the registered
diagnostics fed from it (biasaudit/diagnostics/registry.py), and the engine-driven ones that need forwards or passes of
their own (carrier, ceilings, Shapley, interaction, gradient conflict; biasaudit/diagnostics/__init__.py).

In order: plan the conditions; read ahead what needs the whole split first (its largest bias value, the donor pools,
the train split's priors); equip the pass's accumulators; stream the batches; take the gradient-conflict sample; leave
the shard's context and state (biasaudit/scanning/state.py), which merge across shards and finish into the audit.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from collections.abc import Callable, Mapping, Sized

import numpy as np
import torch
from torch import nn

from biasaudit._core.prefetch import prefetched
from biasaudit._core.progress import Progress
from biasaudit._core.sharding import Shard
from biasaudit.data.adapter import Adapter, optional_hook
from biasaudit.data.batches import SplitLabels, bias_values, checked_labels, indexed_batches, read_split_labels
from biasaudit.data.fingerprint import SampleFingerprint
from biasaudit.diagnostics.carrier import CarrierAccumulator
from biasaudit.diagnostics.ceilings import BranchTap, probe_source, probe_split, token_masks
from biasaudit.diagnostics.donors import DonorPool
from biasaudit.diagnostics.favoured import favoured_classes
from biasaudit.diagnostics.gradients import SeededSample, gradient_conflict
from biasaudit.diagnostics.interaction import InteractionAccumulator
from biasaudit.diagnostics.jsd import BiasPrior
from biasaudit.diagnostics.registry import create_diagnostics
from biasaudit.diagnostics.shapley import MAX_MODALITIES, ShapleyAccumulator
from biasaudit.errors import DataError
from biasaudit.scanning.conditions import parse_conditions, parse_diagnostics
from biasaudit.scanning.config import PRECISIONS, ScanConfig
from biasaudit.scanning.evaluation import BatchEvaluator
from biasaudit.scanning.setup import (
    PassSetup,
    mute_compare_conditions,
    pass_facts,
    pass_setup,
    read_split_ahead,
    setup_ceilings,
    train_prior,
)
from biasaudit.scanning.state import PassState, ScanContext, ScanState


class _Ahead(NamedTuple):
    """What the pass needs of whole splits before its first batch."""

    prior: BiasPrior | None  # the train split's label-under-bias counts; None without a bias key or a train split
    pools: list[DonorPool]  # the swaps' donors, one pool per draw
    train: Callable[[], SplitLabels]  # train's labels and bias values, read at most once per run


class _Equipped(NamedTuple):
    train_forwards: int
    ceiling_note: str | None
    shapley_note: str | None


class _ReadBatch(NamedTuple):
    indices: np.ndarray
    batch: Mapping[str, Any]
    labels: np.ndarray
    bias: np.ndarray | None
    weights: np.ndarray | None  # the batch's bootstrap weights; None for a batch of another shard


class _Streamed(NamedTuple):
    fingerprint: SampleFingerprint
    whole_split: SampleFingerprint | None
    samples: int  # evaluated by this shard
    split_samples: int
    batches: int
    conflict_sample: SeededSample | None


class _FeatureTap:
    """Captures the input of the final classifier: the fused feature (methods.md section 4)."""

    def __init__(self, classifier: nn.Module | None) -> None:
        self.value: torch.Tensor | None = None
        self._handle = classifier.register_forward_pre_hook(self._hook) if classifier is not None else None

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.value = args[0].detach()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()


def main_pass(
    model: nn.Module,
    adapter: Adapter,
    *,
    config: ScanConfig,
    progress: Progress,
    unimodal_models: Mapping[str, nn.Module],
    device: torch.device,
    shard: Shard,
) -> tuple[ScanContext, ScanState]:
    """Every condition on the shard's batches, every registered diagnostic fed beside them; shard 0 also takes the
    gradient-conflict sample (a few batches, chosen by hash over the whole split)."""
    names = [m.name for m in adapter.modalities]
    conditions = parse_conditions(config.conditions, adapter.modalities)
    if config.mute_compare:
        conditions += mute_compare_conditions(adapter)
    wanted = parse_diagnostics(config.conditions)
    ahead = _read_ahead(adapter, config, wanted, progress=progress)
    branches = {m: module for m, module in (optional_hook(adapter, "branches", model) or {}).items() if m in names}
    setup = pass_setup(adapter, conditions, config)
    if branches:
        setup.tap = BranchTap(branches, token_masks(adapter))
    feature_tap = _FeatureTap(optional_hook(adapter, "classifier", model))
    try:
        equipped = _equip(
            setup,
            model,
            adapter,
            config,
            ahead,
            wanted,
            branches=branches,
            unimodal_models=unimodal_models,
            device=device,
            progress=progress,
        )
        evaluator = BatchEvaluator(
            model, adapter, setup, device=device, feature_tap=feature_tap, autocast=PRECISIONS[config.precision]
        )
        streamed = _stream(evaluator, adapter, config, shard=shard, progress=progress)
        conflict = None
        if streamed.conflict_sample is not None:
            progress("gradients", 0, config.gradient_batches)
            conflict = gradient_conflict(
                model, adapter, streamed.conflict_sample.chosen(), device=device, seed=config.seed
            ).to_dict()
            progress("gradients", config.gradient_batches, config.gradient_batches)
    finally:
        feature_tap.close()
        if setup.tap is not None:
            setup.tap.close()
    sources = {
        m: f"checkpoint {getattr(unimodal_models[m], 'biasaudit_source', '(given in Python)')}"
        if m in unimodal_models
        else probe_source(m, probe_split(adapter.splits, config.split), config.split)
        for m in names
    }
    context = ScanContext(
        conditions=conditions,
        wanted=wanted,
        prior_counts=ahead.prior.counts if ahead.prior is not None else None,
        train_forwards=equipped.train_forwards,
        ceiling_note=equipped.ceiling_note,
        ceiling_sources=sources,
        shapley_note=equipped.shapley_note,
    )
    state = ScanState(
        shards=(shard.index,),
        shard_count=shard.count,
        main=PassState.of(evaluator),
        fingerprint=streamed.fingerprint,
        samples=streamed.samples,
        split_samples=streamed.split_samples,
        split_batches=streamed.batches,
        split_fingerprint=streamed.whole_split.to_dict() if streamed.whole_split is not None else {},
        gradient_conflict=conflict,
    )
    return context, state


def _read_ahead(adapter: Adapter, config: ScanConfig, wanted: tuple[str, ...], *, progress: Progress) -> _Ahead:
    """One read of the evaluated split before the pass serves both what needs the whole split first: the largest bias
    value (the JSD and groups are sized for it) and the donor pools of the carrier and interaction swaps."""
    sized = adapter.bias_key is not None and "train" in adapter.splits  # the train split's priors will be read
    pooled = ("carrier" in wanted and sized) or "interaction" in wanted
    largest: int = -1
    pools: list[DonorPool] = []
    if sized or pooled:
        by_key = adapter.bias_key is not None
        largest, pools = read_split_ahead(
            adapter,
            config,
            lambda idx, batch: bias_values(batch, adapter, split=config.split) if by_key else np.zeros(len(idx), dtype=np.int64),
            pool=pooled,
            progress=progress,
        )

    # Train's labels and bias values, read at most once per run: the priors and the ceilings' probe sample both count them.
    def train() -> SplitLabels:
        return read_split_labels(adapter, "train", batch_size=config.batch_size)

    prior = train_prior(adapter, config, split_bias_max=largest, train=train()) if sized else None
    return _Ahead(prior=prior, pools=pools, train=train)


def _equip(
    setup: PassSetup,
    model: nn.Module,
    adapter: Adapter,
    config: ScanConfig,
    ahead: _Ahead,
    wanted: tuple[str, ...],
    *,
    branches: Mapping[str, nn.Module],
    unimodal_models: Mapping[str, nn.Module],
    device: torch.device,
    progress: Progress,
) -> _Equipped:
    """The pass's accumulators: the registered diagnostics, and those of the diagnostics asked for in --conditions."""
    names = [m.name for m in adapter.modalities]
    train_forwards, ceiling_note, shapley_note = 0, None, None
    if "ceilings" in wanted:
        progress("ceilings", 0, None)
        train_forwards, ceiling_note = setup_ceilings(
            setup, model, adapter, branches, unimodal_models, config, device=device, train=ahead.train
        )
    if ahead.prior is not None:
        setup.favoured = favoured_classes(ahead.prior.counts, fraction=config.favoured_fraction)
    setup.diagnostics = create_diagnostics(pass_facts(setup, adapter, ahead.prior, config))
    # Draw 0's pool serves the interaction share too (its R donors are draws already); the carrier swaps with every draw's.
    setup.pool, setup.carrier_pools = (ahead.pools[0] if ahead.pools else None), ahead.pools
    if "carrier" in wanted and ahead.prior is not None:
        setup.carrier = CarrierAccumulator(names, replicates=config.bootstrap_replicates)
    if "shapley" in wanted and len(names) > MAX_MODALITIES:
        shapley_note = f"Exact Shapley values need 2^M forwards; {len(names)} modalities exceed the {MAX_MODALITIES} supported."
    elif "shapley" in wanted:
        setup.shapley = ShapleyAccumulator(names, num_classes=adapter.num_classes, replicates=config.bootstrap_replicates)
    if "interaction" in wanted:
        setup.interaction = InteractionAccumulator(
            modalities=len(names), donors=config.interaction_donors, replicates=config.bootstrap_replicates
        )
    return _Equipped(train_forwards, ceiling_note, shapley_note)


def _batch_count(adapter: Adapter, split: str, batch_size: int) -> int | None:
    try:
        batches = adapter.data(split, batch_size=batch_size)
        # A DataLoader over an iterable dataset has len() but raises TypeError: its count is unknown.
        return len(batches) if isinstance(batches, Sized) else None
    except TypeError:
        return None


def _stream(evaluator: BatchEvaluator, adapter: Adapter, config: ScanConfig, *, shard: Shard, progress: Progress) -> _Streamed:
    """Every batch of the split read (every shard reads all of them), the shard's own evaluated under every condition."""
    fingerprint = SampleFingerprint(with_bias=adapter.bias_key is not None, input_keys=[m.batch_key for m in adapter.modalities])
    # The labels and bias values of every batch, owned or not: shards of one scan must have read the same data.
    whole_split = SampleFingerprint(with_bias=adapter.bias_key is not None) if shard.count > 1 else None
    conflict_sample = SeededSample(k=config.gradient_batches, seed=config.seed) if shard.index == 0 else None
    total = _batch_count(adapter, config.split, config.batch_size)
    seen = split_samples = batches = 0

    def read(numbered: tuple[int, tuple[np.ndarray, Mapping[str, Any]]]) -> _ReadBatch:
        # In the reading thread (biasaudit/_core/prefetch.py): everything that needs the batch but not the model.
        step, (indices, batch) = numbered
        labels = checked_labels(batch, adapter, split=config.split)
        bias = bias_values(batch, adapter, split=config.split) if adapter.bias_key is not None else None
        if whole_split is not None:
            whole_split.update(labels, bias, indices=indices)
        if conflict_sample is not None:  # chosen over the whole split as it is read: no read of its own
            conflict_sample.offer(step, (indices, batch))
        if not shard.owns(step):
            return _ReadBatch(indices, batch, labels, bias, None)
        fingerprint.update(labels, bias, inputs=batch, indices=indices)
        return _ReadBatch(indices, batch, labels, bias, evaluator.draw_weights(indices))

    with torch.no_grad():
        for batches, read_batch in enumerate(
            prefetched(
                enumerate(indexed_batches(adapter, config.split, batch_size=config.batch_size)),
                read,
                ahead=getattr(adapter, "read_ahead", True),
            ),
            start=1,
        ):
            indices, batch, labels, bias, weights = read_batch
            split_samples += len(indices)
            if weights is None:  # another shard's batch
                continue
            evaluator.update(indices, batch, labels, bias, weights=weights)
            seen += len(labels)
            progress("conditions", batches, total)
    if split_samples == 0:
        raise DataError(f"Split {config.split!r} is empty; the adapter's data() yielded no samples.")
    if total is None:  # the batch count is known only now: let the bar finish instead of ticking on
        progress("conditions", batches, batches)
    return _Streamed(fingerprint, whole_split, seen, split_samples, batches, conflict_sample)
