"""A leaderboard from start to end: the starting model's audits, one fix per (method, seed) (runs.py), each method's
changes against the control pooled over seeds (pooling.py), the do-no-harm rule (rule.py), and leaderboard.json with
its page (document.py).

Which Full accuracy must not fall: on an out-of-distribution split the split's own Full accuracy *is* the OOD
accuracy, and a method that trades the in-distribution accuracy for it (MMDB at a large scale: +7 OOD points, -52
on test, docs/fixing.md "Two splits") would pass a Full check taken there. So when the evaluated split is OOD and the adapter
has a `test` split, every run also audits `test` (fix's `also_split`), and `full` — the measure that must be
non-inferior — is the in-distribution Full accuracy on `test`; `ood` is the evaluated split's. Said in the outputs.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.choosing.document import write_document
from biasaudit.choosing.measures import BIAS_MEASURES, carrier_of, is_ood
from biasaudit.choosing.parallel import check_jobs, check_picklable, run_parallel
from biasaudit.choosing.runs import (
    CONTROL,
    LeaderboardSettings,
    check_resumed,
    check_settings,
    finished_run,
    model_fingerprint,
    run_one,
    starting_audit,
    write_settings,
)
from biasaudit.choosing.shards import shard_runs, write_shard_record
from biasaudit._core.sharding import Shard
from biasaudit.errors import InputError
from biasaudit._core.output_paths import check_output_dir
from biasaudit._core.progress import Progress

IN_DISTRIBUTION = "test"


def selection_sentence(settings: LeaderboardSettings, *, validated_on: str) -> str:
    """How each compared method's own option was chosen, in words (the grids of the settings; DFR chooses its C itself)."""
    from biasaudit.training.method_dfr import C_GRID
    from biasaudit.training.selection import OPTION_GRIDS

    def values(grid) -> str:
        return "{" + ", ".join(f"{v:g}" for v in grid) + "}"

    chosen, fixed = [], []
    for method in settings.methods:
        grid = settings.grids.get(method)
        if method == "dfr":
            chosen.append(f"dfr C from {values(C_GRID)} by worst-group accuracy on half of {validated_on}")
        elif grid is not None and len(grid) > 1:
            chosen.append(f"{method} {OPTION_GRIDS[method][0]} from {values(grid)}")
        elif grid is not None:
            fixed.append(f"{method} {OPTION_GRIDS[method][0]} = {grid[0]:g} (a one-value grid)")
        elif method != CONTROL:
            fixed.append(f"{method} with fix's defaults (no option is chosen)")
    said = (
        f"Each method's own option is chosen on {validated_on} by bias-balanced accuracy, never on the evaluated split: "
        + "; ".join(chosen)
        + "."
        if chosen
        else "No method's option is chosen on validation data."
    )
    return said + (" Fixed: " + "; ".join(fixed) + "." if fixed else "")


def run_leaderboard(
    model: nn.Module,
    adapter: Adapter,
    settings: LeaderboardSettings,
    *,
    out: str | os.PathLike,
    device: str = "cpu",
    checkpoint: str | Path | None = None,
    adapter_spec: str | None = None,
    progress: Progress | None = None,
    on_run: Callable[[str, int, bool], None] | None = None,
    jobs: int = 1,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Run (or finish) the leaderboard into `out`; returns the leaderboard document it wrote. `on_run(method, seed,
    reused)` is told about every run as it is done or found done. `jobs` > 1 trains that many runs at once in
    spawned processes (parallel.py); the document is the same. `shard` (I of N, a job array's task): train only
    every N-th (method, seed) run from the I-th and write its record (shards.py) instead of the document, which
    merge_leaderboard writes from every shard's folder."""
    from biasaudit import __version__
    from biasaudit._core.files import file_sha256

    out = check_output_dir(out)
    check_settings(adapter, settings)
    check_jobs(jobs, device)
    check_picklable(adapter, jobs)
    settings = replace(
        settings,
        starting_model=model_fingerprint(model),
        adapter=adapter_spec or type(adapter).__qualname__,
        device=str(device),
        biasaudit=__version__,
    )
    check_resumed(out, settings)
    for method in settings.methods:  # a hook the adapter lacks, before any audit or training
        _check_method(method, model, adapter, settings)
    write_settings(out, settings)
    started = time.perf_counter()
    validated_on = "val" if "val" in adapter.splits else "a seeded 20% of train (the adapter has no val split)"
    befores = {
        seed: starting_audit(model, adapter, out, settings, seed, device=device, checkpoint=checkpoint, progress=progress)
        for seed in settings.seeds
    }
    start = befores[settings.seeds[0]]
    ood = is_ood(start)
    check_primary(settings, start)  # before any training: the starting audit says whether the split is OOD
    also = IN_DISTRIBUTION if ood and settings.split != IN_DISTRIBUTION and IN_DISTRIBUTION in adapter.splits else None
    also_befores = (
        {
            seed: starting_audit(
                model, adapter, out, settings, seed, device=device, checkpoint=checkpoint, progress=progress, split=also
            )
            for seed in settings.seeds
        }
        if also is not None
        else {}
    )
    runs: dict[tuple[str, int], dict[str, Any]] = {}

    def done(method: str, seed: int, run: dict[str, Any]) -> None:
        runs[method, seed] = run
        if on_run is not None:
            on_run(method, seed, run.get("reused", False))

    pending = []
    for method, seed in shard_runs(settings, shard):
        found = finished_run(out, settings, method, seed, also_split=also)
        if found is not None:
            done(method, seed, found)
        else:
            pending.append((method, seed))
    if jobs > 1 and len(pending) > 1:
        run_parallel(
            model,
            adapter,
            out,
            settings,
            pending,
            befores=befores,
            also_befores=also_befores,
            device=device,
            also_split=also,
            jobs=jobs,
            done=done,
        )
    else:
        for method, seed in pending:
            done(
                method,
                seed,
                run_one(
                    model,
                    adapter,
                    out,
                    settings,
                    method,
                    seed,
                    before=befores[seed],
                    device=device,
                    progress=progress,
                    also_split=also,
                    also_before=also_befores.get(seed),
                ),
            )
    manifest = {
        "biasaudit": __version__,
        "checkpoint": {"path": str(checkpoint), "sha256": file_sha256(checkpoint)} if checkpoint is not None else None,
        "adapter": adapter_spec,
        "device": device,
        "settings": settings.to_dict(),
        "selection": selection_sentence(settings, validated_on=validated_on),
        "full_accuracy_on": also or settings.split,
        "wall_time_s": round(time.perf_counter() - started, 3),
    }
    if shard is not None:
        return write_shard_record(out, shard, settings, runs, manifest=manifest, also_split=also)
    return write_document(out, settings, runs, start=start, also=also, manifest=manifest)


def check_primary(settings: LeaderboardSettings, start: Mapping[str, Any]) -> None:
    """The primary measure must be one the evaluated split has."""
    if settings.primary == "ood" and not is_ood(start):
        raise InputError(
            f"--primary ood ranks by OOD accuracy, but the starting model's audit of {settings.split!r} finds its bias "
            "distribution the same as train's (not out of distribution); choose another --primary or an OOD split."
        )
    if settings.primary == "follow-rate" and carrier_of(start) is None:
        raise InputError(
            f"--primary follow-rate ranks by the carrier's bias-follow rate, but the starting model's audit of "
            f"{settings.split!r} names no carrier; choose another --primary."
        )


def _check_method(method: str, model: nn.Module, adapter: Adapter, settings: LeaderboardSettings) -> None:
    from biasaudit.choosing.runs import run_options
    from biasaudit.training.fix_checks import check_method
    from biasaudit.training.methods import make_method
    from biasaudit.training.selection import placeholder_options

    options = run_options(settings, method)
    check_method(method, options)
    check = getattr(make_method(method, **placeholder_options(method, options)), "check", None)
    if callable(check):
        check(model, adapter)


__all__ = ["BIAS_MEASURES", "LeaderboardSettings", "run_leaderboard"]
