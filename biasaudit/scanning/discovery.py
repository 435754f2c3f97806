"""Bias values for data without a bias key (methods.md section 3): k-means clusters of the dominant modality's branch
embeddings, fitted on train after the main pass (the dominant modality is known only then), and a second pass over the
full and missing conditions that measures the diagnostics reading bias values (groups; biasaudit/diagnostics/registry.py
ON_DISCOVERED_BIAS) and the carrier test on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from biasaudit._core.progress import Progress
from biasaudit.data.adapter import Adapter, optional_hook
from biasaudit.data.batches import checked_labels, indexed_batches
from biasaudit.diagnostics.branch_outputs import branch_outputs
from biasaudit.diagnostics.carrier import CarrierAccumulator
from biasaudit.diagnostics.favoured import favoured_classes
from biasaudit.diagnostics.jsd import BiasPrior, JSDDiagnostic, discover_bias_clusters
from biasaudit.diagnostics.protocol import PassFacts
from biasaudit.diagnostics.registry import ON_DISCOVERED_BIAS, create_diagnostics
from biasaudit.scanning.conditions import parse_conditions
from biasaudit.scanning.config import PRECISIONS, ScanConfig
from biasaudit.scanning.evaluation import BatchEvaluator
from biasaudit.scanning.setup import pass_facts, pass_setup, read_split_ahead


@dataclass(frozen=True)
class DiscoveredBias:
    """The bias values the k-means discovery found."""

    prior: BiasPrior
    values: np.ndarray  # the cluster of every evaluated sample, by global index
    jsd: JSDDiagnostic  # the Full condition's mistakes against the clusters' priors
    forwards: int  # samples forwarded to find them (train and the evaluated split)


@dataclass(frozen=True)
class BiasDiscovery:
    """What the k-means discovery found; `found` is None when it could not run, and `note` says why."""

    note: str
    found: DiscoveredBias | None = None


def discover_bias(
    model: nn.Module, adapter: Adapter, config: ScanConfig, *, dominant: str | None, device: torch.device
) -> BiasDiscovery:
    """k-means on the dominant modality's embeddings, fitted on train."""
    branches = optional_hook(adapter, "branches", model) or {}
    if dominant is None or dominant not in branches:
        return BiasDiscovery(
            "The data has no bias attribute and the adapter has no branches() hook for the dominant modality, "
            "so no bias values could be discovered; the JSD diagnostic is skipped."
        )
    if "train" not in adapter.splits:
        return BiasDiscovery(
            "The data has no bias attribute and the adapter offers no train split to discover one on; the JSD "
            "diagnostic is skipped."
        )
    train = branch_outputs(model, adapter, branches[dominant], "train", device=device, batch_size=config.batch_size)
    clusters = discover_bias_clusters(train["embedding"], k=config.kmeans_k, seed=config.seed)
    num_bias = int(clusters.n_clusters)
    prior = BiasPrior(num_classes=adapter.num_classes, num_bias=num_bias)
    prior.update(train["label"], clusters.predict(train["embedding"]))
    evaluation = branch_outputs(model, adapter, branches[dominant], config.split, device=device, batch_size=config.batch_size)
    values = clusters.predict(evaluation["embedding"]).astype(np.int64)
    # Fed from the discovery's own forwards of the split: the clusters are known only once they are done.
    jsd = JSDDiagnostic(PassFacts(conditions=("full",), num_classes=adapter.num_classes, prior=prior, config=config))
    jsd.add(evaluation["probabilities"], evaluation["label"], values)
    note = (
        f"The data has no bias attribute: bias values are {num_bias} k-means clusters of the dominant "
        f"modality's ({dominant}) branch embeddings, fitted on the train split (methods.md section 3)."
    )
    forwards = len(train["label"]) + len(evaluation["label"])
    return BiasDiscovery(note, DiscoveredBias(prior=prior, values=values, jsd=jsd, forwards=forwards))


def discovered_bias_pass(
    model: nn.Module,
    adapter: Adapter,
    config: ScanConfig,
    discovery: DiscoveredBias,
    wanted: tuple[str, ...],
    *,
    device: torch.device,
    progress: Progress,
) -> BatchEvaluator:
    """Groups and the carrier test on the discovered bias values, in a pass over the full and missing conditions."""
    conditions = [c for c in parse_conditions(config.conditions, adapter.modalities) if c.group in ("full", "missing")]
    prior, discovered = discovery.prior, discovery.values
    setup = pass_setup(adapter, conditions, config, favoured=favoured_classes(prior.counts, fraction=config.favoured_fraction))
    setup.diagnostics = create_diagnostics(pass_facts(setup, adapter, prior, config), ON_DISCOVERED_BIAS)
    if "carrier" in wanted:
        pools = read_split_ahead(adapter, config, lambda idx, batch: discovered[idx], pool=True, progress=progress)[1]
        setup.pool, setup.carrier_pools = pools[0], pools
        setup.carrier = CarrierAccumulator([m.name for m in adapter.modalities], replicates=config.bootstrap_replicates)
    evaluator = BatchEvaluator(model, adapter, setup, device=device, autocast=PRECISIONS[config.precision])
    with torch.no_grad():
        for step, (indices, batch) in enumerate(indexed_batches(adapter, config.split, batch_size=config.batch_size)):
            evaluator.update(indices, batch, checked_labels(batch, adapter, split=config.split), discovered[indices])
            progress("bias groups", step + 1, None)
    return evaluator
