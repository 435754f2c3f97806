"""What a pass evaluates (PassSetup), made before its first batch: the conditions with their impairments resolved and their draws,
the train split's label-under-bias prior, the donor pools of the swaps, the ceilings' probes, and the facts the
registered diagnostics are sized by (biasaudit/diagnostics/protocol.py PassFacts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from biasaudit._core.progress import Progress
from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import SplitLabels, bias_range, checked_labels, indexed_batches, labels_and_bias, read_split_labels
from biasaudit.data.impairments import Impairment, muting_impairment, resolve_impairment
from biasaudit.diagnostics.accuracy import ConditionAccumulator
from biasaudit.diagnostics.carrier import CarrierAccumulator
from biasaudit.diagnostics.ceilings import BranchTap, fit_probes, probe_split
from biasaudit.diagnostics.donors import DonorPool
from biasaudit.diagnostics.interaction import InteractionAccumulator
from biasaudit.diagnostics.jsd import BiasPrior
from biasaudit.diagnostics.mutes import Moments, alternative_mutes
from biasaudit.diagnostics.protocol import Diagnostic, PassFacts
from biasaudit.diagnostics.shapley import ShapleyAccumulator
from biasaudit.scanning.conditions import Condition
from biasaudit.scanning.config import ScanConfig
from biasaudit.scanning.draws import base_name, draw_name, draw_seed, with_draws


@dataclass
class PassSetup:
    """What one pass evaluates. The main pass has everything; the pass that runs on k-means-discovered bias
    values (no bias key) has only full + missing conditions, the diagnostics that read bias values, and the carrier."""

    conditions: Sequence[Condition]
    impairments: Mapping[str, Impairment]
    replicates: int
    seed: int
    diagnostics: Mapping[str, Diagnostic] = field(default_factory=dict)  # the registered ones (biasaudit/diagnostics/registry.py)
    carrier: CarrierAccumulator | None = None
    pool: DonorPool | None = None
    carrier_pools: Sequence[DonorPool] = ()  # one per draw of the donors (biasaudit/scanning/draws.py); pool is draw 0's
    favoured: np.ndarray | None = None  # F(k) per bias value, [K, C] bool (diagnostics/favoured.py)
    probes: Mapping[str, list[Any]] = field(default_factory=dict)  # modality -> its fitted probe per draw
    unimodal: Mapping[str, nn.Module] = field(default_factory=dict)
    ceilings: ConditionAccumulator | None = None
    shapley: ShapleyAccumulator | None = None
    interaction: InteractionAccumulator | None = None
    tap: BranchTap | None = None
    moments: dict[str, Moments] = field(default_factory=dict)  # "full:m" and "muted:m" branch embeddings


def pass_setup(adapter: Adapter, conditions: list[Condition], config: ScanConfig, **extra: Any) -> PassSetup:
    """What a pass evaluates, with each condition's impairment resolved once (`adapter` already carries --mute)."""
    kinds = {m.name: m.kind for m in adapter.modalities}
    impairments = {c.name: resolve_impairment(kinds[c.impaired_modality], c.impairment_name) for c in conditions if c.modality}
    drawn = with_draws(conditions, impairments, config.draws)
    impairments.update({c.name: impairments[base_name(c.name)] for c in drawn if c.draw})
    return PassSetup(conditions=drawn, impairments=impairments, replicates=config.bootstrap_replicates, seed=config.seed, **extra)


def pass_facts(setup: PassSetup, adapter: Adapter, prior: BiasPrior | None, config: ScanConfig) -> PassFacts:
    return PassFacts(
        conditions=tuple(c.name for c in setup.conditions), num_classes=adapter.num_classes, prior=prior, config=config
    )


def mute_compare_conditions(adapter: Adapter) -> list[Condition]:
    """The other muting choice of every modality that has one (image: zero vs mean), as extra conditions."""
    return [
        Condition(f"missing:{m.name}@{alternative}", "mute_compare", m.name, alternative, 1.0)
        for m in adapter.modalities
        for alternative in alternative_mutes(m.kind, muting_impairment(m).name)
    ]


def read_split_ahead(
    adapter: Adapter,
    config: ScanConfig,
    bias_of: Callable[[np.ndarray, Mapping[str, Any]], np.ndarray],
    *,
    pool: bool,
    progress: Progress,
) -> tuple[int, list[DonorPool]]:
    """One read of the evaluated split (no forward): its largest bias value (-1 for none) and, when `pool`, the
    per-(label, bias value) donor reservoirs, one per draw (draw d keeps and draws donors with seed + d)."""
    largest = -1
    pools = (
        [DonorPool(adapter.modalities, capacity=config.donor_pool, seed=draw_seed(config.seed, d)) for d in range(config.draws)]
        if pool
        else []
    )
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


def train_prior(adapter: Adapter, config: ScanConfig, *, split_bias_max: int, train: SplitLabels) -> BiasPrior:
    """The train split's label-under-bias counts (the JSD's priors, and what tells bias-aligned groups from conflicting)."""
    label_array, bias_array = labels_and_bias(
        adapter, "train", batch_size=config.batch_size, purpose="the JSD priors", read=train
    )
    # Bias values that occur only in the evaluated split (new on an OOD split) are legitimate: they get
    # no prior and no JSD (methods.md section 3 needs a train prior), so size for both splits.
    num_bias = bias_range(adapter, bias_array, np.array([split_bias_max]))
    prior = BiasPrior(num_classes=adapter.num_classes, num_bias=num_bias)
    prior.update(label_array, bias_array)
    return prior


def ceiling_names(modality: str, draws: int) -> list[str]:
    """The ceilings accumulator's rows of one modality: its ceiling under every probe draw, and the model alone."""
    return [draw_name(f"ceiling:{modality}", d) for d in range(draws)] + [f"alone:{modality}"]


def setup_ceilings(
    setup: PassSetup,
    model: nn.Module,
    adapter: Adapter,
    branches: Mapping[str, nn.Module],
    unimodal: Mapping[str, nn.Module],
    config: ScanConfig,
    *,
    device: torch.device,
    train: Callable[[], SplitLabels],
) -> tuple[int, str | None]:
    """Probes (or unimodal checkpoints) for every modality that has one; returns the probes' forwards and a note."""
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
            probes, forwards = fit_probes(
                model,
                adapter,
                probe_branches,
                device=device,
                batch_size=config.batch_size,
                seed=draw_seed(config.seed, draw),
                per_class=config.ceiling_per_class,
                labels=labels,
                split=split,
            )
            fitted.append(probes)
            forwarded += forwards
        setup.probes = {m: [probes[m] for probes in fitted] for m in fitted[0] if all(m in probes for probes in fitted)}
    lacking = [m for m in names if m not in unimodal and m not in setup.probes]
    note = (
        None
        if not lacking
        else (
            f"No ceiling for {', '.join(lacking)}: a ceiling needs the adapter's branches() hook for that modality and a val or "
            "train split (a linear probe on the branch output), or a unimodal checkpoint (--unimodal MODALITY=PATH)."
        )
    )
    covered = [m for m in names if m in unimodal or m in setup.probes]
    if covered:
        setup.ceilings = ConditionAccumulator(
            ["full"] + [name for m in covered for name in ceiling_names(m, len(setup.probes.get(m, [None])))],
            num_classes=adapter.num_classes,
            replicates=config.bootstrap_replicates,
            seed=config.seed,
        )
    return forwarded, note
