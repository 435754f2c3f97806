"""One audit of a fixed model: every condition on every batch in a single pass over the data.

Data flow: adapter.data(split) -> for each batch, for each condition: impair the raw inputs ->
adapter.prepare -> adapter.forward -> streaming accumulators (biasaudit/scanning/evaluation.py). Only bounded
samples keep per-sample data (embeddings, donors); everything else is counts, so memory does not grow
with the dataset. Extra passes are made only for what cannot share the main one: the label-under-bias
priors (train split, and the evaluated split's bias values so new ones can be sized; no forward), the
donor pool of the carrier test (a read, no forward), the ceilings' linear probes (train forwards), the
gradient-conflict sample (needs gradients) and, when the data has no bias value, the k-means bias
discovery and a second pass for groups and the carrier test on the discovered values.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from biasaudit.scanning import analyses
from biasaudit.data.adapter import Adapter, optional_hook
from biasaudit.data.batches import SplitLabels, bias_values, checked_labels, indexed_batches, read_split_labels, shares_reads
from biasaudit.scanning.conditions import Condition, parse_conditions, parse_diagnostics
from biasaudit.diagnostics.carrier import CarrierAccumulator
from biasaudit.diagnostics.ceilings import (DEFAULT_PER_CLASS, BranchTap, ceilings_section, fit_probes, probe_source, probe_split,
                                            token_masks)
from biasaudit.diagnostics.donors import DEFAULT_CAPACITY, DonorPool
from biasaudit.scanning.draws import base_name, combined_counts, combined_pass, draw_name, draw_seed, with_draws
from biasaudit.diagnostics.favoured import DEFAULT_FAVOURED_FRACTION, aligned_share, favoured_classes, favoured_section
from biasaudit.diagnostics.groups import GROUPINGS, GroupAccumulator, choose_grouping
from biasaudit.diagnostics.interaction import DEFAULT_DONORS, InteractionAccumulator
from biasaudit.diagnostics.mutes import alternative_mutes, mute_findings, rms_z
from biasaudit.diagnostics.shapley import MAX_MODALITIES, ShapleyAccumulator
from biasaudit.errors import DataError, InputError
from biasaudit.scanning.evaluation import BatchEvaluator, PassSetup
from biasaudit.data.fingerprint import SampleFingerprint
from biasaudit.data.impairments import IMPAIRMENTS, muting_impairment, resolve_impairment
from biasaudit.diagnostics.accuracy import ConditionAccumulator
from biasaudit.diagnostics.gap import dominant_modality
from biasaudit.diagnostics.gradients import SeededSample
from biasaudit._core.prefetch import prefetched
from biasaudit._core.progress import Progress, silent
from biasaudit.scanning.agreement import stopping_together
from biasaudit.scanning.state import PassState, ScanContext, ScanState, merged
from biasaudit._core.sharding import WHOLE, Shard, process_group_shard
from biasaudit.scanning.summary import condition_rows, group_summary, ratio_sweep, reliance

PROJECTIONS = ("umap", "pca")
# The forwards' precision: fp32, or autocast to bfloat16 / float16 on CUDA (logits are read back in float32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def with_mute_overrides(adapter: Adapter, mute: tuple[tuple[str, str], ...], *, label: str = "--mute") -> Adapter:
    """A shallow copy of the adapter whose modalities use the requested muting impairments. `label` names the
    setting in errors (the flag; from Python, the parameter)."""
    if not mute:
        return adapter
    names = [m.name for m in adapter.modalities]
    overrides = dict(mute)
    for name in overrides:
        if name not in names:
            raise InputError(f"{label} names modality {name!r}. Available: {', '.join(names)}.")
    for m in adapter.modalities:
        # Checked here, before any work, against the impairments that really mute this kind.
        mutes = sorted(n for n, impairment in IMPAIRMENTS.get(m.kind, {}).items() if impairment.mutes)
        if m.name in overrides and overrides[m.name] not in mutes:
            raise InputError(f"{label} gives {m.name}={overrides[m.name]}, but {overrides[m.name]!r} is not a muting impairment of "
                             f"{m.kind} modality {m.name!r}. Available: {', '.join(mutes)}.")
    copied = copy.copy(adapter)
    copied.modalities = [replace(m, missing=overrides.get(m.name, m.missing)) for m in adapter.modalities]
    copied.reads_as = getattr(adapter, "reads_as", adapter)  # the same data: split reads are shared with the original
    return copied


# ScanConfig field -> (the setting's name on the command line and in config files, its least value).
_INTEGER_SETTINGS = {
    "batch_size": ("batch_size", 1), "seed": ("seed", 0, 2**64 - 1), "bootstrap_replicates": ("bootstrap", 10),
    "embedding_points": ("embedding_points", 10), "min_wrong": ("min_wrong", 1), "gradient_batches": ("gradient_batches", 1),
    "kmeans_k": ("kmeans_k", 2), "min_group": ("min_group", 1), "donor_pool": ("donor_pool", 1),
    "ceiling_per_class": ("ceiling_per_class", 1), "interaction_donors": ("interaction_donors", 1), "draws": ("draws", 1),
}


@dataclass(frozen=True)
class ScanConfig:
    split: str = "test"
    conditions: str = "default"
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    bootstrap_replicates: int = 1000
    embedding_points: int = 5000
    projection: str = "umap"
    min_wrong: int = 30
    gradient_batches: int = 8
    kmeans_k: int = 16
    mute: tuple[tuple[str, str], ...] = ()  # (modality, muting impairment) overrides of what "missing" means
    mute_compare: bool = False  # also measure the other muting choice of each modality (image: zero and mean)
    min_group: int = 10  # smallest (label, bias value) group that enters worst-group and bias-balanced accuracy
    group_by: str = "auto"  # bias: (label, bias value); alignment: (label, aligned/conflicting); auto: see diagnostics/groups.py
    donor_pool: int = DEFAULT_CAPACITY  # donors kept per (label, bias value) for the carrier and interaction swaps
    ceiling_per_class: int = DEFAULT_PER_CLASS  # samples per class of the probe split (val, else train) a ceiling probe is fitted on
    interaction_donors: int = DEFAULT_DONORS
    precision: str = "fp32"
    # F(k): the classes with a training share >= this fraction of bias value k's largest (and above 1/C); diagnostics/favoured.py.
    favoured_fraction: float = DEFAULT_FAVOURED_FRACTION
    draws: int = 1  # independent draws of every random condition (noise, ratio subsets, probe samples); biasaudit/scanning/draws.py

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise InputError(f"Projection {self.projection!r} is unknown. Available: {', '.join(PROJECTIONS)}.")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision is {self.precision!r}, which is unknown. Available: {', '.join(PRECISIONS)}.")
        if self.group_by not in GROUPINGS:
            raise InputError(f"group_by is {self.group_by!r}, which is unknown. Available: {', '.join(GROUPINGS)}.")
        # One check for every source (command line, config file, Python): the messages start with the setting's
        # name as the config file and the CLI know it, so the CLI can say where a bad value came from.
        for field_name, (name, least, *most) in _INTEGER_SETTINGS.items():
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least or (most and value > most[0]):
                expected = ("a positive integer" if least == 1 else f"an integer of at least {least}") if not most else \
                    f"an integer from {least} to 2**64 - 1"
                raise InputError(f"{name} is {value!r}; expected {expected}.")
        fraction = self.favoured_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise InputError(f"favoured_fraction is {fraction!r}; expected a number above 0 and at most 1.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str, *, label: str = "Device", cpu: str = "--device cpu") -> torch.device:
    """`label` and `cpu` word the errors for the caller (the flag, or a Python parameter and keyword)."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"{label} {name!r} is not a torch device name; expected e.g. cpu, cuda or cuda:0.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{label} {name!r} was requested but CUDA is not available on this machine; use {cpu}.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(f"{label} {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0.")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """Autocast to 16 bits is offered on CUDA only: on the CPU it is slow or unsupported for many operators."""
    if PRECISIONS.get(precision) is not None and device.type != "cuda":
        raise InputError(f"precision is {precision!r}, which needs a CUDA device; this scan runs on {device.type}. Use fp32 there.")


class _ReadBatch(NamedTuple):
    indices: np.ndarray
    batch: Mapping[str, Any]
    labels: np.ndarray
    bias: np.ndarray | None
    weights: np.ndarray | None  # the batch's bootstrap weights; None for a batch of another shard


def _batch_count(adapter: Adapter, split: str, batch_size: int) -> int | None:
    try:
        return len(adapter.data(split, batch_size=batch_size))  # type: ignore[arg-type]
    except TypeError:
        return None


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




def _read_split_ahead(adapter: Adapter, config: ScanConfig, bias_of: Callable[[np.ndarray, Mapping[str, Any]], np.ndarray], *,
                      pool: bool, progress: Progress) -> tuple[int, list[DonorPool]]:
    """One read of the evaluated split (no forward): its largest bias value (-1 for none) and, when `pool`, the
    per-(label, bias value) donor reservoirs, one per draw (draw d keeps and draws donors with seed + d)."""
    largest = -1
    pools = [DonorPool(adapter.modalities, capacity=config.donor_pool, seed=draw_seed(config.seed, d)) for d in range(config.draws)] if pool else []
    for step, (indices, batch) in enumerate(indexed_batches(adapter, config.split, batch_size=config.batch_size)):
        values = bias_of(indices, batch)
        if values.size:
            largest = max(largest, int(values.max()))
        if pools:
            labels = checked_labels(batch, adapter, split=config.split)
            for donors in pools:
                donors.add(batch, indices, labels, values)
            progress("donors", step + 1, None)
    for donors in pools:
        donors.freeze()
    return largest, pools


def _mute_compare_conditions(adapter: Adapter) -> list[Condition]:
    """The other muting choice of every modality that has one (image: zero vs mean), as extra conditions."""
    return [Condition(f"missing:{m.name}@{alternative}", "mute_compare", m.name, alternative, 1.0)
            for m in adapter.modalities for alternative in alternative_mutes(m.kind, muting_impairment(m).name)]


def ceiling_names(modality: str, draws: int) -> list[str]:
    """The ceilings accumulator's rows of one modality: its ceiling under every probe draw, and the model alone."""
    return [draw_name(f"ceiling:{modality}", d) for d in range(draws)] + [f"alone:{modality}"]


def _setup_ceilings(setup: PassSetup, model: nn.Module, adapter: Adapter, branches: Mapping[str, nn.Module],
                    unimodal: Mapping[str, nn.Module], config: ScanConfig, *, device: torch.device,
                    train: Callable[[], SplitLabels]) -> tuple[int, str | None]:
    """Probes (or unimodal checkpoints) for every modality that has one; returns the probes' forwards and a note."""
    names = [m.name for m in adapter.modalities]
    setup.unimodal = unimodal
    probe_branches = {m: branches[m] for m in names if m not in unimodal and m in branches}
    forwarded = 0
    split = probe_split(adapter.splits, config.split)
    if probe_branches and split is not None:
        # Through the run's shared reads, as train's are: every rank and every part draws the same seeded sample.
        labels = train() if split == "train" else read_split_labels(adapter, split, batch_size=config.batch_size)
        # A probe's seeded sample is a draw: draw d fits on the sample of seed + d (biasaudit/scanning/draws.py).
        fitted = []
        for draw in range(config.draws):
            probes, forwards = fit_probes(model, adapter, probe_branches, device=device, batch_size=config.batch_size,
                                          seed=draw_seed(config.seed, draw), per_class=config.ceiling_per_class, labels=labels, split=split)
            fitted.append(probes)
            forwarded += forwards
        setup.probes = {m: [probes[m] for probes in fitted] for m in fitted[0] if all(m in probes for probes in fitted)}
    lacking = [m for m in names if m not in unimodal and m not in setup.probes]
    note = None if not lacking else (
        f"No ceiling for {', '.join(lacking)}: a ceiling needs the adapter's branches() hook for that modality and a val or "
        "train split (a linear probe on the branch output), or a unimodal checkpoint (--unimodal MODALITY=PATH).")
    covered = [m for m in names if m in unimodal or m in setup.probes]
    if covered:
        setup.ceilings = ConditionAccumulator(["full"] + [name for m in covered for name in ceiling_names(m, len(setup.probes.get(m, [None])))],
                                              num_classes=adapter.num_classes, replicates=config.bootstrap_replicates, seed=config.seed)
    return forwarded, note


@shares_reads
def scan_model(model: nn.Module, adapter: Adapter, *, config: ScanConfig, progress: Progress | None = None,
               unimodal_models: Mapping[str, nn.Module] | None = None, distributed: bool = False) -> dict[str, Any]:
    """Evaluate every condition and every diagnostic; return the audit's sections (no manifest).

    unimodal_models: modality -> a model trained on that modality alone, whose accuracy with the other
    modalities muted is that modality's ceiling (instead of a linear probe on its branch).
    distributed: inside an initialised torch.distributed process group of several processes (torchrun), every process
    calls this, evaluates its shard of the batches (biasaudit/_core/sharding.py), rank 0 merges the states and finishes the
    audit, and every process returns the same sections. Off, or outside a group, this process scans every sample."""
    group = process_group_shard() if distributed else None
    progress = progress or silent
    with ExitStack() as scanning:
        # A rank that fails in its setup (the model onto its device) or its pass stops the others at the pass's end,
        # before the merge's collectives: one sentence there instead of a gather that waits for it, or meets it gone.
        with stopping_together(group is not None):
            adapter, device, unimodal_models = scanning.enter_context(
                _scanning(model, adapter, config=config, unimodal_models=unimodal_models))
            context, state = _main_pass(model, adapter, config=config, progress=progress, unimodal_models=unimodal_models, device=device,
                                        shard=group or WHOLE)
        if group is None:
            return finish_scan(state, context, adapter=adapter, config=config, model=model, device=device, progress=progress)
        return _finish_on_rank_zero(state, context, adapter=adapter, config=config, model=model, device=device, progress=progress)


@shares_reads
def scan_shard(model: nn.Module, adapter: Adapter, *, config: ScanConfig, shard: Shard, progress: Progress | None = None,
               unimodal_models: Mapping[str, nn.Module] | None = None) -> tuple[ScanContext, ScanState]:
    """One shard of a scan, for job arrays without a process group: its context and state, which
    `biasaudit.scanning.parts` writes and `finish_scan` turns into the audit once every shard's state is merged."""
    check_shardable(adapter)
    with _scanning(model, adapter, config=config, unimodal_models=unimodal_models) as (adapter, device, unimodal_models):
        return _main_pass(model, adapter, config=config, progress=progress or silent, unimodal_models=unimodal_models, device=device,
                          shard=shard)


def check_shardable(adapter: Adapter) -> None:
    """A scan can be cut into parts only when its data has a bias key (checked before any work)."""
    if adapter.bias_key is None:
        raise InputError("--shard needs data with a bias key: without one, bias values are discovered from the merged scan's dominant "
                         "modality, which no single part knows. Scan such data in one process or on torchrun.")


@contextmanager
def _scanning(model: nn.Module, adapter: Adapter, *, config: ScanConfig, unimodal_models: Mapping[str, nn.Module] | None):
    """Checks, eval mode for every forward (no dropout, batch-norm statistics read, not updated) with the caller's
    train/eval state of every submodule put back afterwards, and numpy's BLAS on one thread."""
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    adapter = with_mute_overrides(adapter, config.mute)
    names = [m.name for m in adapter.modalities]
    unimodal_models = dict(unimodal_models or {})
    for name, unimodal in unimodal_models.items():
        if name not in names:
            raise InputError(f"A unimodal checkpoint is given for modality {name!r}. Available: {', '.join(names)}.")
        unimodal.to(device).eval()
    modes = [(module, module.training) for module in model.modules()]
    model.to(device).eval()
    try:
        # numpy's BLAS on one thread while the scan runs: its products here are small (bootstrap sums), and its idle
        # threads spinning beside torch's own pool slowed the model's forwards 7x on a 2-core machine (bench/scan_speed.py).
        with threadpool_limits(1, user_api="blas"):
            yield adapter, device, unimodal_models
    finally:
        for module, training in modes:
            module.train(training)


def _finish_on_rank_zero(state: ScanState, context: ScanContext, **finishing: Any) -> dict[str, Any]:
    """Rank 0 merges every rank's state and finishes the audit; every rank returns it."""
    import torch.distributed as dist

    states: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(state, states, dst=0)
    sections: list[Any] = [None]
    with stopping_together():  # the others wait while rank 0 finishes alone, and stop with it when it fails
        if dist.get_rank() == 0:
            sections[0] = finish_scan(merged(states), context, **finishing)
    dist.broadcast_object_list(sections, src=0)
    return sections[0]


def _main_pass(model: nn.Module, adapter: Adapter, *, config: ScanConfig, progress: Progress, unimodal_models: Mapping[str, nn.Module],
               device: torch.device, shard: Shard) -> tuple[ScanContext, ScanState]:
    """Every condition on the shard's batches, the Full-condition diagnostics streamed beside them; shard 0 also takes
    the gradient-conflict sample (a few batches, chosen by hash over the whole split)."""
    names = [m.name for m in adapter.modalities]
    conditions = parse_conditions(config.conditions, adapter.modalities)
    if config.mute_compare:
        conditions += _mute_compare_conditions(adapter)
    wanted = parse_diagnostics(config.conditions)
    # One read of the evaluated split before the pass serves both what needs the whole split first: the largest bias
    # value (the JSD and groups are sized for it) and the carrier's donor pool.
    sized = adapter.bias_key is not None and "train" in adapter.splits  # the JSD priors will be read
    pooled = ("carrier" in wanted and sized) or "interaction" in wanted
    split_bias_max, pools = None, []
    if sized or pooled:
        by_key = adapter.bias_key is not None
        largest, pools = _read_split_ahead(adapter, config, lambda idx, batch: bias_values(batch, adapter, split=config.split) if by_key
                                          else np.zeros(len(idx), dtype=np.int64), pool=pooled, progress=progress)
        split_bias_max = largest if sized else None
    # Train's labels and bias values, read at most once per run: the JSD priors and the ceilings' probe sample both count them.
    def train() -> SplitLabels:
        return read_split_labels(adapter, "train", batch_size=config.batch_size)

    diagnostics = analyses.FullConditionDiagnostics(adapter, config=config, split_bias_max=split_bias_max, train=train)
    branches = {m: module for m, module in (optional_hook(adapter, "branches", model) or {}).items() if m in names}
    setup = _pass_setup(adapter, conditions, config)
    train_forwards, ceiling_note = 0, None
    if branches:
        setup.tap = BranchTap(branches, token_masks(adapter))
    feature_tap = _FeatureTap(optional_hook(adapter, "classifier", model))
    try:
        if "ceilings" in wanted:
            progress("ceilings", 0, None)
            train_forwards, ceiling_note = _setup_ceilings(setup, model, adapter, branches, unimodal_models, config, device=device, train=train)
        prior = diagnostics.prior if adapter.bias_key is not None else None
        if prior is not None:
            setup.favoured = favoured_classes(prior.counts, fraction=config.favoured_fraction)
            _add_group_accumulators(setup, adapter, prior.num_bias, config)
        # Draw 0's pool serves the interaction share too (its R donors are draws already); the carrier swaps with every draw's.
        setup.pool, setup.carrier_pools = (pools[0] if pools else None), pools
        if "carrier" in wanted and prior is not None:
            setup.carrier = CarrierAccumulator(names, replicates=config.bootstrap_replicates)
        shapley_note = None
        if "shapley" in wanted and len(names) > MAX_MODALITIES:
            shapley_note = f"Exact Shapley values need 2^M forwards; {len(names)} modalities exceed the {MAX_MODALITIES} supported."
        elif "shapley" in wanted:
            setup.shapley = ShapleyAccumulator(names, num_classes=adapter.num_classes, replicates=config.bootstrap_replicates)
        if "interaction" in wanted:
            setup.interaction = InteractionAccumulator(modalities=len(names), donors=config.interaction_donors,
                                                       replicates=config.bootstrap_replicates)

        evaluator = BatchEvaluator(model, adapter, setup, device=device, feature_tap=feature_tap, autocast=PRECISIONS[config.precision])
        fingerprint = SampleFingerprint(with_bias=adapter.bias_key is not None, input_keys=[m.key for m in adapter.modalities])
        # The labels and bias values of every batch, owned or not: shards of one scan must have read the same data.
        whole_split = SampleFingerprint(with_bias=adapter.bias_key is not None) if shard.count > 1 else None
        total = _batch_count(adapter, config.split, config.batch_size)
        seen = split_samples = batches = 0
        conflict_sample = SeededSample(k=config.gradient_batches, seed=config.seed) if shard.index == 0 else None

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
            for batches, read_batch in enumerate(prefetched(enumerate(indexed_batches(adapter, config.split, batch_size=config.batch_size)), read,
                                                                 ahead=getattr(adapter, "read_ahead", True)), start=1):
                indices, batch, labels, bias, weights = read_batch
                split_samples += len(indices)
                if weights is None:  # another shard's batch
                    continue
                full_logits = evaluator.update(indices, batch, labels, bias, weights=weights)
                diagnostics.update(full_logits, evaluator.full_features, batch, labels, indices=indices, bias=bias)
                seen += len(labels)
                progress("conditions", batches, total)
        if split_samples == 0:
            raise DataError(f"Split {config.split!r} is empty; the adapter's data() yielded no samples.")
        if total is None:  # the batch count is known only now: let the bar finish instead of ticking on
            progress("conditions", batches, batches)
        conflict = diagnostics.gradient_conflict(model, device=device, progress=progress, sample=conflict_sample) if conflict_sample is not None else None
    finally:
        feature_tap.close()
        if setup.tap is not None:
            setup.tap.close()
    sources = {m: f"checkpoint {getattr(unimodal_models[m], 'biasaudit_source', '(given in Python)')}" if m in unimodal_models
               else probe_source(m, probe_split(adapter.splits, config.split), config.split) for m in names}
    context = ScanContext(conditions=conditions, wanted=wanted, prior_counts=prior.counts if prior is not None else None,
                          train_forwards=train_forwards, ceiling_note=ceiling_note, ceiling_sources=sources, shapley_note=shapley_note)
    state = ScanState(shards=(shard.index,), shard_count=shard.count, main=PassState.of(evaluator), fingerprint=fingerprint,
                      embeddings=diagnostics.embeddings, has_features=diagnostics.has_features, bias_counts=diagnostics.bias_counts,
                      jsd=diagnostics.jsd, samples=seen, split_samples=split_samples, split_batches=batches,
                      split_fingerprint=whole_split.to_dict() if whole_split is not None else {}, gradient_conflict=conflict)
    return context, state


def finish_scan(state: ScanState, context: ScanContext, *, adapter: Adapter, config: ScanConfig, model: nn.Module | None,
                device: torch.device | None, progress: Progress) -> dict[str, Any]:
    """The audit's sections from a whole scan's (possibly merged) state. `model` is used only where the data has no bias
    key (k-means bias discovery and its second pass); a merge of parts has no model and never needs one."""
    names = [m.name for m in adapter.modalities]
    conditions, wanted = context.conditions, context.wanted
    # Draws of the random conditions become their means under their own names, once every shard is merged in.
    main = combined_pass(state.main, seed=config.seed)
    diagnostics = analyses.FullConditionDiagnostics(adapter, config=config, prior_counts=context.prior_counts)
    diagnostics.embeddings, diagnostics.has_features, diagnostics.bias_counts = state.embeddings, state.has_features, state.bias_counts
    if state.jsd is not None:
        diagnostics.jsd = state.jsd
    seen = state.samples
    scores = main.accuracy.result()
    class_names = list(adapter.class_names or [str(i) for i in range(adapter.num_classes)])
    summary = {"full": {k: v for k, v in scores["full"].to_dict().items() if k in ("accuracy", "accuracy_ci", "macro_f1", "n")}}
    for group in ("missing", "noisy"):
        section = group_summary(group, conditions, scores)
        if section is not None:
            summary[group] = section
    dominant = summary.get("missing", {}).get("dominant")
    sections = diagnostics.finish(model, dominant=dominant, device=device, conflict=state.gradient_conflict)
    sections["mute_checks"] = _mute_checks(main, conditions, scores, summary, adapter, class_names, mute_compare=config.mute_compare)
    if sections["mute_checks"]["compare_note"]:
        sections["notes"].append(sections["mute_checks"]["compare_note"])
    sections["notes"].extend(f["message"] for f in sections["mute_checks"]["findings"])

    bias_pass, bias_source, bias_note = main, "bias_key", None
    extra_forwards: Counter = Counter()
    if adapter.bias_key is None and diagnostics.discovered_bias is not None:
        bias_source = "kmeans"
        bias_note = (f"Bias values are the {diagnostics.prior.num_bias} k-means clusters of the dominant modality's ({dominant}) branch "
                     "embeddings (the data has no bias attribute); groups are measured under the full and missing conditions only.")
        evaluator = _discovered_bias_pass(model, adapter, config, diagnostics, wanted, device=device, progress=progress)
        bias_pass, extra_forwards = PassState.of(evaluator), evaluator.forwards
    elif adapter.bias_key is None:
        bias_note = "The data has no bias attribute and none could be discovered (see the JSD note), so there are no groups and no carrier test."
    prior_counts = diagnostics.prior.counts if diagnostics.prior is not None else None
    derived = _bias_sections(sections, bias_pass, prior_counts, conditions, config, adapter, class_names, wanted,
                             bias_source=bias_source, bias_note=bias_note, dominant=dominant)
    if "carrier" in wanted:
        summary["carrier"] = sections["carrier"].get("carrier")
    if "ceilings" in wanted:
        # The probes' draws become their mean, as the conditions' do.
        ceilings = combined_counts(main.ceilings, seed=config.seed) if main.ceilings is not None else None
        sections["ceilings"] = ceilings_section(names, ceilings.result() if ceilings is not None else {}, context.ceiling_sources,
                                                observed_gap=summary.get("missing", {}).get("gap"), note=context.ceiling_note,
                                                num_classes=adapter.num_classes, probe_split=probe_split(adapter.splits, config.split))
    sections["calibration"] = main.calibration.section()
    if "shapley" in wanted:
        sections["shapley"] = main.shapley.section() if main.shapley is not None else {"available": False, "note": context.shapley_note}
    if "interaction" in wanted:
        sections["interaction"], found = main.interaction.section()
        derived.update(found)  # the share's replicates, for compare to pair

    bootstrap = main.accuracy.bootstrap_counts().to_dict()
    bootstrap["derived"] = {name: values.tolist() for name, values in derived.items()}
    forwards = Counter(main.forwards) + Counter({"ceilings": context.train_forwards, "bias_discovery": diagnostics.discovery_forwards})
    forwards += extra_forwards
    cost = {stage: forwards.get(stage, 0) / seen for stage in ("conditions", "carrier", "ceilings", "shapley", "interaction", "bias_discovery")}
    cost["total"] = sum(cost.values())
    return {
        "dataset": {"split": config.split, "n": seen, "num_classes": adapter.num_classes,
                    "modalities": [{"name": m.name, "kind": m.kind} for m in adapter.modalities],
                    "class_names": adapter.class_names and list(adapter.class_names),
                    "bias_names": adapter.bias_names and list(adapter.bias_names)},
        "diagnostics": ["groups", "calibration", *wanted],
        "summary": summary,
        "conditions": condition_rows(conditions, scores),
        "ratio_sweep": ratio_sweep(conditions, scores, muted_fractions={k: v / (seen * main.accuracy.draws.get(k, 1))
                                                                        for k, v in main.muted_counts.items()}),
        "reliance": reliance(conditions, scores, class_names=class_names),
        **sections,
        # Kept in the file so that two audits of the same samples and seed (before/after a fix) get *paired*
        # intervals for their differences, whether compared in memory or read back (biasaudit/comparing.py).
        "samples": state.fingerprint.to_dict(),
        "bootstrap": bootstrap,
        "_forwards_per_sample": cost,
    }


def _add_group_accumulators(setup: PassSetup, adapter: Adapter, num_bias: int, config: ScanConfig) -> None:
    names = [c.name for c in setup.conditions]
    setup.groups = GroupAccumulator(names, num_classes=adapter.num_classes, num_bias=num_bias, replicates=config.bootstrap_replicates)


def _bias_sections(sections: dict[str, Any], bias_pass: PassState, prior_counts: np.ndarray | None, conditions: Sequence[Condition],
                   config: ScanConfig, adapter: Adapter, class_names: list[str], wanted: tuple[str, ...], *,
                   bias_source: str, bias_note: str | None, dominant: str | None) -> dict[str, np.ndarray]:
    """The groups and carrier sections; returns their per-replicate figures for bootstrap.derived."""
    derived: dict[str, np.ndarray] = {}
    setup = bias_pass
    if setup.groups is not None and prior_counts is not None:
        table = [c.name for c in conditions if c.group in ("full", "missing")]
        favoured = favoured_classes(prior_counts, fraction=config.favoured_fraction)
        bias_names = adapter.bias_names if bias_source == "bias_key" else None
        alignment = choose_grouping(setup.groups, min_group=config.min_group, grouping=config.group_by, favoured=favoured) == "alignment"
        # (label, aligned, conflicting or neutral) groups are unions of (label, bias value) groups: summed from them, exactly.
        sections["groups"], found = (setup.groups.by_alignment(favoured) if alignment else setup.groups).section(
            favoured=favoured, min_group=config.min_group, class_names=class_names, bias_names=bias_names, bias_source=bias_source,
            table_conditions=table, train_aligned_share=aligned_share(prior_counts, favoured), alignment=alignment,
            asked=config.group_by == "alignment")
        sections["groups"]["favoured"] = favoured_section(prior_counts, favoured, fraction=config.favoured_fraction,
                                                          class_names=class_names, bias_names=bias_names)
        sections["groups"]["note"] = " ".join(filter(None, [bias_note, sections["groups"]["note"],
                                                            sections["groups"]["favoured"]["note"]])) or None
        derived.update({k: v for k, v in found.items() if k.split(":", 1)[1] in table})
    else:
        sections["groups"] = {"available": False, "note": bias_note or "The train split's label-under-bias priors are unavailable (see the JSD note), "
                                                                        "so groups cannot be told bias-aligned from bias-conflicting."}
    if "carrier" in wanted:
        if setup.carrier is not None:
            sections["carrier"], found = setup.carrier.section(dominant=dominant, bias_source=bias_source, donor_pool=config.donor_pool,
                                                               note=bias_note if bias_source == "kmeans" else None)
            derived.update(found)
        else:
            sections["carrier"] = {"available": False, "note": bias_note or "The carrier test needs bias values and the train split's label-under-bias priors."}
    return derived


def _pass_setup(adapter: Adapter, conditions: list[Condition], config: ScanConfig, **extra: Any) -> PassSetup:
    """What a pass evaluates, with each condition's impairment resolved once (`adapter` already carries --mute)."""
    kinds = {m.name: m.kind for m in adapter.modalities}
    impairments = {c.name: resolve_impairment(kinds[c.modality], c.impairment) for c in conditions if c.modality}
    drawn = with_draws(conditions, impairments, config.draws)
    impairments.update({c.name: impairments[base_name(c.name)] for c in drawn if c.draw})
    return PassSetup(conditions=drawn, impairments=impairments, replicates=config.bootstrap_replicates, seed=config.seed, **extra)


def _discovered_bias_pass(model: nn.Module, adapter: Adapter, config: ScanConfig, diagnostics: analyses.FullConditionDiagnostics,
                          wanted: tuple[str, ...], *, device: torch.device, progress: Progress) -> BatchEvaluator:
    """Without a bias key the bias values are k-means clusters found after the main pass (they need the dominant
    modality); groups and the carrier test then run in a second pass over the full and missing conditions."""
    conditions = [c for c in parse_conditions(config.conditions, adapter.modalities) if c.group in ("full", "missing")]
    prior, discovered = diagnostics.prior, diagnostics.discovered_bias
    setup = _pass_setup(adapter, conditions, config, favoured=favoured_classes(prior.counts, fraction=config.favoured_fraction))
    _add_group_accumulators(setup, adapter, prior.num_bias, config)
    if "carrier" in wanted:
        pools = _read_split_ahead(adapter, config, lambda idx, batch: discovered[idx], pool=True, progress=progress)[1]
        setup.pool, setup.carrier_pools = pools[0], pools
        setup.carrier = CarrierAccumulator([m.name for m in adapter.modalities], replicates=config.bootstrap_replicates)
    evaluator = BatchEvaluator(model, adapter, setup, device=device, autocast=PRECISIONS[config.precision])
    with torch.no_grad():
        for step, (indices, batch) in enumerate(indexed_batches(adapter, config.split, batch_size=config.batch_size)):
            evaluator.update(indices, batch, checked_labels(batch, adapter, split=config.split), discovered[indices])
            progress("bias groups", step + 1, None)
    return evaluator


def _mute_checks(main: PassState, conditions: list[Condition], scores: Mapping[str, Any], summary: dict[str, Any],
                 adapter: Adapter, class_names: list[str], *, mute_compare: bool) -> dict[str, Any]:
    """Degenerate or far-outside mutes (biasaudit/diagnostics/mutes.py), and the --mute-compare table."""
    confusion = main.accuracy.confusion
    moments = main.moments
    distances = {m.name: rms_z(moments[f"full:{m.name}"], moments[f"muted:{m.name}"])
                 for m in adapter.modalities if f"full:{m.name}" in moments and f"muted:{m.name}" in moments}
    rows = [{"name": c.name, "modality": c.modality, "impairment": c.impairment, "predicted": confusion[c.name].sum(axis=0)}
            for c in conditions if c.group == "missing"]
    findings = mute_findings(rows, label_counts=confusion["full"].sum(axis=1), class_names=class_names,
                             kinds={m.name: m.kind for m in adapter.modalities}, distances=distances)
    missing = summary.get("missing")
    caveats = [f["message"] for f in findings if missing and f["modality"] == missing.get("dominant")]
    if caveats:
        missing["dominant_caveat"] = caveats[0]
    compared, compare_note = None, None
    alternatives = [c for c in conditions if c.group == "mute_compare"]
    if mute_compare and not alternatives:
        compare_note = ("--mute-compare measured nothing: no modality's kind has a second muting impairment "
                        "(an image has two: the black zero and the mid-grey mean).")
    if alternatives and missing:
        compared = {}
        for c in alternatives:
            entry = compared.setdefault(c.modality, {"choices": {}, "dominant": {}})
            current = next(r for r in conditions if r.group == "missing" and r.modality == c.modality)
            for choice in (current, c):
                entry["choices"][choice.impairment] = {"accuracy": scores[choice.name].accuracy, "flip_rate": scores[choice.name].flip_rate}
                flips = {**missing["flip_rates"], c.modality: scores[choice.name].flip_rate}
                entry["dominant"][choice.impairment] = dominant_modality(flips) if max(flips.values()) > 0 else None
    return {"findings": findings, "distances": distances, "compare": compared, "compare_note": compare_note}


def timed_scan(model: nn.Module, adapter: Adapter, *, config: ScanConfig, progress: Progress | None = None) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    sections = scan_model(model, adapter, config=config, progress=progress)
    return sections, time.perf_counter() - start
