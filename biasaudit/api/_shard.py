"""`ba.scan_shard`: one shard of a scan of a checkpoint, for a job array; `ba.merge` turns the parts into the audit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from biasaudit._core.arguments import at_least, checked, not_empty, output_dir
from biasaudit._core.progress import Progress
from biasaudit.api._scan import checked_scan
from biasaudit.data.adapter import Adapter
from biasaudit.errors import InputError
from biasaudit.results import StrPath


def _shard_problem(value: str) -> str | None:
    """None for "I/N"; otherwise parse_shard's own sentence (which shard is out of range), naming the parameter."""
    from biasaudit._core.sharding import parse_shard

    try:
        parse_shard(value)
    except InputError as exc:
        raise InputError(str(exc).replace("--shard", "The 'shard' parameter of ba.scan_shard", 1)) from None
    return None


@checked(
    "ba.scan_shard",
    shard=_shard_problem,
    out=output_dir("ba.scan_shard", "out"),
    split=not_empty,
    batch_size=at_least(1),
    seed=at_least(0),
    bootstrap=at_least(10),
)
def scan_shard(
    checkpoint: StrPath,
    adapter: Adapter | str,
    *,
    shard: str,
    out: StrPath,
    split: str = "test",
    conditions: str | Sequence[str] = "default",
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    bootstrap: int = 1000,
    projection: str = "umap",
    progress: Progress | None = None,
    unimodal_models: Mapping[str, StrPath] | None = None,
    trust_checkpoint: bool = False,
    provenance: Mapping[str, Any] | None = None,
    **settings: Any,
) -> Path:
    """Scan shard I of N of `checkpoint` (the batches I, I+N, I+2N, ...; I counts from 0) and write its part,
    scan-part-I-of-N.pt, into `out`; returns the part's path. `merge` of the N parts (or `biasaudit merge`) makes the
    audit one process would have made, byte for byte in its figures. This is `biasaudit scan --shard I/N`, for job
    arrays (every task its own process, on any machine); inside one torch.distributed job use `scan(...,
    distributed=True)` instead. The adapter's data must come in the same batches in every task.

    Parameters: `checkpoint` (the model's checkpoint file) and `adapter` (an Adapter or its spec, see `load_adapter`);
    `shard` ("I/N"); `out` (the folder of the part); the scan's settings as `scan` takes them: `split`, `conditions`,
    `seed`, `device`, `batch_size`, `bootstrap`, `projection`, `progress`, `unimodal_models` (modality -> checkpoint),
    `trust_checkpoint`, `provenance` (recorded as the audit manifest's `settings`) and `settings` (any other ScanConfig
    field by name).
    """
    from biasaudit._core.output_paths import check_output_dir
    from biasaudit._core.sharding import parse_shard
    from biasaudit.scanning.audit import scan_checkpoint_shard
    from biasaudit.scanning.engine import check_shardable
    from biasaudit.scanning.parts import part_name

    loaded, spec, config = checked_scan(
        scan_shard,
        adapter,
        settings,
        unimodal_models=unimodal_models,
        split=split,
        conditions=conditions,
        seed=seed,
        device=str(device),
        batch_size=batch_size,
        bootstrap_replicates=bootstrap,
        projection=projection,
    )
    check_shardable(loaded)
    part = parse_shard(shard)
    folder = check_output_dir(out, option="ba.scan_shard's 'out'")
    return scan_checkpoint_shard(
        Path(checkpoint),
        loaded,
        config=config,
        shard=part,
        part=folder / part_name(part),
        adapter_spec=spec,
        trust=trust_checkpoint,
        progress=progress,
        unimodal=tuple((name, Path(path)) for name, path in (unimodal_models or {}).items()),
        settings=dict(provenance) if provenance is not None else None,
    )
