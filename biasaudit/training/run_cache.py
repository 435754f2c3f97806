"""The feature cache of one training run in biasaudit's loop (loop.py): where it is kept, what it is filled at, when it
is declined, and that its files go when the run ends.

- Files. A cache directory may be shared by runs (several fixes, a job array's tasks, the processes of a torchrun):
  each run keeps its files in a folder of its own made inside it, removed when the run ends, so no run truncates,
  serves or deletes another's. The bound (max_bytes) is each run's, so each process's under torchrun.
- Data-parallel. Each process's part of a batch has batch_size / K rows, so the cache is filled in batches of that
  size: the calls it can serve exactly (feature_cache.py; a part with one row more runs the frozen parts).
- Precision. The cache holds float32 outputs; a run in bf16 or fp16 computes its frozen parts in 16 bits, so serving
  float32 outputs would change its weights: "auto" declines, "on" refuses.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import torch
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.errors import InputError
from biasaudit.training.data_parallel import Processes
from biasaudit.training.feature_cache import CacheSettings, FeatureCache
from biasaudit.training.train_config import TrainConfig


def refused_precision(settings: CacheSettings, precision: str) -> str | None:
    """The sentence that refuses "on" for a run in 16 bits; None when the precision allows the cache."""
    if settings.mode != "on" or precision == "fp32":
        return None
    return (
        f"--feature-cache on serves the frozen parts' float32 outputs, but this run computes in {precision}, so the "
        "cache would change its weights; use --feature-cache off or --precision fp32."
    )


@contextmanager
def run_cache(
    model: nn.Module,
    adapter: Adapter,
    *,
    config: TrainConfig,
    settings: CacheSettings,
    processes: Processes,
    device: torch.device,
    report: Callable[[dict[str, Any]], None] | None,
) -> Iterator[FeatureCache | None]:
    """The run's filled cache (None when declined or off) for the block; `report` gets its settings and note first."""
    refusal = refused_precision(settings, config.precision)
    if refusal is not None:
        raise InputError(refusal)
    features: FeatureCache | None = None
    note = (
        "feature cache off: frozen modules run in every training batch."
        if settings.mode == "off"
        else f"nothing cached: this run computes in {config.precision}, and the cache holds float32 outputs."
    )
    scratch = None
    made = settings.directory is not None and not Path(settings.directory).exists()
    try:
        if settings.mode != "off" and config.precision == "fp32":
            if processes.world > 1:
                config = replace(config, batch_size=max(1, config.batch_size // processes.world))
            if settings.directory is not None:
                Path(settings.directory).mkdir(parents=True, exist_ok=True)
                scratch = Path(tempfile.mkdtemp(prefix="run-", dir=settings.directory))
                settings = replace(settings, directory=scratch)
            features, note = FeatureCache.build(model, adapter, config=config, settings=settings, device=device)
        if report is not None:
            report({**(features.settings() if features is not None else {"mode": settings.mode}), "note": note})
        yield features
    finally:
        if features is not None:
            features.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
            if made:  # a directory this run created: left only if something else was put in it meanwhile
                with suppress(OSError):
                    scratch.parent.rmdir()
