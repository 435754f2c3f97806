"""A leaderboard from start to end: the starting model's audits, one fix per (method, seed) (runs.py), each method's
changes against the control pooled over seeds (pooling.py), the do-no-harm rule (rule.py), and leaderboard.json with
its page.

Which Full accuracy must not fall: on an out-of-distribution split the split's own Full accuracy *is* the OOD
accuracy, and a method that trades the in-distribution accuracy for it (MMDB at a large scale: +7 OOD points, -52
on test, docs/fixing.md "Two splits") would pass a Full check taken there. So when the evaluated split is OOD and the adapter
has a `test` split, every run also audits `test` (fix's `also_split`), and `full` — the measure that must be
non-inferior — is the in-distribution Full accuracy on `test`; `ood` is the evaluated split's. Said in the outputs.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

import numpy as np
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.choosing.measures import (
    BETTER,
    BIAS_MEASURES,
    LABELS,
    carrier_of,
    is_ood,
    measure_names,
    measure_values,
    paired_changes,
)
from biasaudit.choosing.parallel import check_jobs, check_picklable, run_parallel
from biasaudit.choosing.pooling import PooledChange, SeedChange, pool_changes
from biasaudit.choosing.rule import recommend
from biasaudit.choosing.runs import (
    CONTROL,
    LeaderboardSettings,
    check_resumed,
    check_settings,
    finished_run,
    model_fingerprint,
    run_dir,
    run_one,
    starting_audit,
    write_settings,
)
from biasaudit.choosing.shards import shard_runs, write_shard_record
from biasaudit._core.sharding import Shard
from biasaudit.errors import InputError
from biasaudit._core.output_paths import check_output_dir
from biasaudit._core.output_set import OutputSet
from biasaudit._core.progress import Progress
from biasaudit.results import write_json_atomic

IN_DISTRIBUTION = "test"
FILES = ("leaderboard.json", "leaderboard.html")
PRIMARY_MEASURE = {"worst-group": "worst_group", "bias-balanced": "bias_balanced", "ood": "ood", "follow-rate": "follow_rate"}


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
    checkpoint: str | os.PathLike | None = None,
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


def write_document(
    out: Path,
    settings: LeaderboardSettings,
    runs: Mapping[tuple[str, int], Mapping[str, Any]],
    *,
    start: Mapping[str, Any],
    also: str | None,
    manifest: Mapping[str, Any],
) -> dict[str, Any]:
    """From every run of the settings and the starting audit of the first seed: the changes against the control pooled
    over seeds, the rule's decision, the kept checkpoints, and leaderboard.json with its page, written as one set."""
    from biasaudit.report.leaderboard_render import write_leaderboard_html

    ood = is_ood(start)
    names = measure_names(start)
    carrier = carrier_of(start)
    pooled = {
        method: _pooled(method, runs, settings, names=names, carrier=carrier, also=also)
        for method in settings.methods
        if method != CONTROL
    }
    decision = recommend(pooled, primary=settings.primary, max_full_drop=settings.max_full_drop, ood_split=ood, carrier=carrier)
    kept = _keep(out, settings, runs, names=names, carrier=carrier, also=also)
    document = {
        "schema": "biasaudit.leaderboard",
        "schema_version": 1,
        "manifest": dict(manifest),
        "split": settings.split,
        "ood": ood,
        "carrier": carrier,
        "control": CONTROL,
        "measures": [
            {
                "name": name,
                "label": _label(name, carrier, also),
                "better": BETTER[name],
                "kind": "accuracy" if name == "full" else "reliance" if name == "gap" else "bias",
            }
            for name in names
        ],
        "methods": [
            _method_entry(
                method,
                runs,
                settings,
                pooled.get(method),
                decision,
                names=names,
                carrier=carrier,
                also=also,
                kept=kept.get(method),
            )
            for method in settings.methods
        ],
        "recommendation": {
            key: value
            for key, value in decision.to_dict().items()
            if key in ("method", "primary", "max_full_drop", "verdict", "reasons")
        },
        "verdict": decision.verdict,
    }
    with OutputSet(out, files=FILES) as outputs:
        document = {**document, "run": outputs.stamp()}
        write_json_atomic(document, outputs.staged("leaderboard.json"))
        write_leaderboard_html(document, outputs.staged("leaderboard.html"))
        outputs.commit(("leaderboard.html", "leaderboard.json"))
    return document


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


def _label(name: str, carrier: str | None, also: str | None) -> str:
    if name == "full" and also is not None:
        return f"Full accuracy (in distribution, on {also})"
    if name == "follow_rate" and carrier is not None:
        return f"{carrier} bias-follow rate"
    return LABELS[name]


def _values(run: Mapping[str, Any], *, names: tuple[str, ...], carrier: str | None, also: str | None) -> dict[str, float | None]:
    """A run's own figures per measure (the in-distribution audit's Full accuracy when there is one)."""
    values = measure_values(run["after"], carrier)
    if also is not None:
        values["full"] = measure_values(run["also_after"], carrier)["full"]
    return {name: values[name] for name in names}


def _pooled(
    method: str,
    runs: Mapping[tuple[str, int], Mapping[str, Any]],
    settings: LeaderboardSettings,
    *,
    names: tuple[str, ...],
    carrier: str | None,
    also: str | None,
) -> dict[str, PooledChange]:
    per_measure: dict[str, list[SeedChange]] = {name: [] for name in names}
    for seed in settings.seeds:
        control, treated = runs[CONTROL, seed], runs[method, seed]
        changes = paired_changes(control["after"], treated["after"], names=names, carrier=carrier)
        if also is not None:
            changes["full"] = paired_changes(control["also_after"], treated["also_after"], names=("full",), carrier=carrier)[
                "full"
            ]
        for name in names:
            per_measure[name].append(SeedChange(seed=seed, delta=changes[name].delta, replicates=changes[name].replicates))
    return pool_changes(per_measure, seed=0)


def _epoch_loss(steps: list[Mapping[str, Any]]) -> list[float]:
    by_epoch: dict[int, list[float]] = {}
    for step in steps:
        loss = step.get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            by_epoch.setdefault(int(step.get("epoch", 0)), []).append(float(loss))
    return [float(np.mean(by_epoch[epoch])) for epoch in sorted(by_epoch)]


def _keep(
    out: Path,
    settings: LeaderboardSettings,
    runs: Mapping[tuple[str, int], Mapping[str, Any]],
    *,
    names: tuple[str, ...],
    carrier: str | None,
    also: str | None,
) -> dict[str, dict[str, Any]]:
    """--keep best: each method's model.pt of the seed with the best primary bias measure (else Full accuracy); the
    others are removed. all: every run's; none: none was written. Returns method -> {"path": the kept file relative to
    out, or None; "note": why, when it is not what --keep asked for}."""
    kept: dict[str, dict[str, Any]] = {}
    measure = PRIMARY_MEASURE[settings.primary]
    measure = measure if measure in names else "full"
    sign = -1.0 if BETTER[measure] == "lower" else 1.0
    for method in settings.methods:
        if settings.keep == "none":
            continue
        scores = {
            seed: _values(runs[method, seed], names=names, carrier=carrier, also=also).get(measure) for seed in settings.seeds
        }
        best = max(settings.seeds, key=lambda s: (scores[s] is not None, sign * (scores[s] or 0.0), -settings.seeds.index(s)))
        for seed in settings.seeds:
            path = run_dir(out, method, seed) / "model.pt"
            if settings.keep == "best" and seed != best and path.is_file():
                path.unlink()
        wanted = [best] if settings.keep == "best" else list(settings.seeds)
        # Runs are reused across restarts whatever --keep was then: a checkpoint an earlier --keep removed is not there.
        lost = [seed for seed in wanted if not (run_dir(out, method, seed) / "model.pt").is_file()]
        path = run_dir(out, method, best) / "model.pt"
        kept[method] = {
            "path": path.relative_to(out).as_posix() if path.is_file() else None,
            "note": (
                f"seed {', '.join(map(str, lost))}'s model.pt was removed by an earlier run of this leaderboard with "
                "--keep best or none; rerun the method into a new folder to have it"
            )
            if lost
            else None,
            "chosen_on": f"the best seed by {measure.replace('_', '-')} on {settings.split if measure != 'full' else also or settings.split}, "
            "the evaluated split: its figures there are the best of the seeds, so audit it on other data "
            "before relying on them"
            if settings.keep == "best"
            else None,
        }
    for stale in (out / "runs").glob("*/seed-*/state"):  # no run is resumed mid-training (a killed run starts again)
        shutil.rmtree(stale, ignore_errors=True)
    return kept


def _chosen_options(
    method: str, runs: Mapping[tuple[str, int], Mapping[str, Any]], settings: LeaderboardSettings
) -> dict[str, Any] | None:
    """The option each seed's run chose on validation data (None for a method that chooses none)."""
    selections = {seed: runs[method, seed]["training"].get("option_selection") for seed in settings.seeds}
    if not any(selections.values()):
        return None
    first = next(s for s in selections.values() if s)
    return {
        "option": first["option"],
        "grid": first["grid"],
        "validated_on": first["validated_on"],
        "criterion": first["criterion"],
        "chosen": {str(seed): (chosen or {}).get("chosen") for seed, chosen in selections.items()},
        # Seeds whose candidates all scored the same on val: the choice is the method's default, not a finding.
        "undecided_seeds": [
            seed for seed, chosen in selections.items() if chosen and len(chosen.get("tied") or []) == len(chosen["grid"]) > 1
        ],
    }


def _method_entry(
    method: str,
    runs: Mapping[tuple[str, int], Mapping[str, Any]],
    settings: LeaderboardSettings,
    pooled: Mapping[str, PooledChange] | None,
    decision: Any,
    *,
    names: tuple[str, ...],
    carrier: str | None,
    also: str | None,
    kept: Mapping[str, Any] | None,
) -> dict[str, Any]:
    seeds = []
    for seed in settings.seeds:
        run = runs[method, seed]
        seeds.append(
            {
                "seed": seed,
                "run_id": run["run_id"],
                "folder": run_dir(Path("."), method, seed).as_posix(),
                "values": _values(run, names=names, carrier=carrier, also=also),
                "epoch_loss": _epoch_loss(run["steps"]),
                "wall_time_s": run["training"].get("wall_time_s"),
            }
        )
    values = {}
    for name in names:
        figures = [entry["values"][name] for entry in seeds if entry["values"][name] is not None]
        values[name] = {
            "mean": float(np.mean(figures)) if figures else None,
            "std": float(np.std(figures, ddof=1)) if len(figures) > 1 else None,
        }
    judgement = decision.per_method.get(method)
    changes = None
    if pooled is not None:
        changes = {
            name: {
                "delta": change.delta,
                "interval": list(change.interval) if change.interval else None,
                "seed_deltas": list(change.seed_deltas),
                "seed_spread": change.seed_spread,
                "significant": change.significant,
                "why_no_interval": change.no_interval,
            }
            for name, change in pooled.items()
        }
    return {
        "method": method,
        "control": method == CONTROL,
        "seeds": seeds,
        "values": values,
        "changes": changes,
        "options": _chosen_options(method, runs, settings),
        "sentence": judgement.sentence
        if judgement is not None
        else "The control: plain cross-entropy under the same loop, "
        "epochs, optimizer and seeds; every change is measured against it.",
        "recommended": bool(judgement is not None and judgement.recommended),
        "kept_checkpoint": (kept or {}).get("path"),
        "kept_note": (kept or {}).get("note"),
        "kept_chosen_on": (kept or {}).get("chosen_on"),
    }


__all__ = ["BIAS_MEASURES", "LeaderboardSettings", "run_leaderboard"]
