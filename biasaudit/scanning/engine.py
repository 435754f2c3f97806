"""One audit of a fixed model: every condition on every batch in a single pass over the data.

Data flow: adapter.data(split) -> for each batch, for each condition: impair the raw inputs -> adapter.prepare ->
adapter.forward -> the pass's accumulators (biasaudit/scanning/evaluation.py) and the registered diagnostics
(biasaudit/diagnostics/registry.py). Only bounded samples keep per-sample data (embeddings, donors); everything else is
counts, so memory does not grow with the dataset. Extra passes are made only for what cannot share the main one: the
label-under-bias priors (train split, and the evaluated split's bias values so new ones can be sized; no forward), the
donor pool of the carrier test (a read, no forward), the ceilings' linear probes (train forwards), the
gradient-conflict sample (needs gradients) and, when the data has no bias value, the k-means bias discovery and a
second pass for groups and the carrier test on the discovered values.

The modules, in the order a scan runs them: config (settings), setup (what a pass evaluates), main_pass, evaluation
(one batch), state (what a pass leaves, and how shards merge), parts (shards as files), discovery and finish (the
audit's sections).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any
from collections.abc import Mapping

from threadpoolctl import threadpool_limits
from torch import nn

from biasaudit._core.progress import Progress, silent
from biasaudit._core.sharding import WHOLE, Shard, process_group_shard
from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import shares_reads
from biasaudit.errors import InputError
from biasaudit.scanning.agreement import stopping_together
from biasaudit.scanning.config import ScanConfig, check_precision, resolve_device, with_mute_overrides
from biasaudit.scanning.finish import finish_scan
from biasaudit.scanning.main_pass import main_pass
from biasaudit.scanning.state import ScanContext, ScanState, merged


@shares_reads
def scan_model(
    model: nn.Module,
    adapter: Adapter,
    *,
    config: ScanConfig,
    progress: Progress | None = None,
    unimodal_models: Mapping[str, nn.Module] | None = None,
    distributed: bool = False,
) -> dict[str, Any]:
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
                _scanning(model, adapter, config=config, unimodal_models=unimodal_models)
            )
            context, state = main_pass(
                model,
                adapter,
                config=config,
                progress=progress,
                unimodal_models=unimodal_models,
                device=device,
                shard=group or WHOLE,
            )
        if group is None:
            return finish_scan(state, context, adapter=adapter, config=config, model=model, device=device, progress=progress)
        return _finish_on_rank_zero(state, context, adapter=adapter, config=config, model=model, device=device, progress=progress)


@shares_reads
def scan_shard(
    model: nn.Module,
    adapter: Adapter,
    *,
    config: ScanConfig,
    shard: Shard,
    progress: Progress | None = None,
    unimodal_models: Mapping[str, nn.Module] | None = None,
) -> tuple[ScanContext, ScanState]:
    """One shard of a scan, for job arrays without a process group: its context and state, which
    `biasaudit.scanning.parts` writes and `finish_scan` turns into the audit once every shard's state is merged."""
    check_shardable(adapter)
    with _scanning(model, adapter, config=config, unimodal_models=unimodal_models) as (adapter, device, unimodal_models):
        return main_pass(
            model,
            adapter,
            config=config,
            progress=progress or silent,
            unimodal_models=unimodal_models,
            device=device,
            shard=shard,
        )


def check_shardable(adapter: Adapter) -> None:
    """A scan can be cut into parts only when its data has a bias key (checked before any work)."""
    if adapter.bias_key is None:
        raise InputError(
            "--shard needs data with a bias key: without one, bias values are discovered from the merged scan's dominant "
            "modality, which no single part knows. Scan such data in one process or on torchrun."
        )


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

    states: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(state, states, dst=0)
    sections: list[Any] = [None]
    with stopping_together():  # the others wait while rank 0 finishes alone, and stop with it when it fails
        if states is not None:  # rank 0, which gathered every rank's state
            sections[0] = finish_scan(merged(states), context, **finishing)
    dist.broadcast_object_list(sections, src=0)
    return sections[0]
