"""A leaderboard's document from its finished runs: each method's changes against the control pooled over seeds
(pooling.py), the do-no-harm rule's decision (rule.py), the checkpoints --keep keeps, and each method's entry, written
as leaderboard.json with its page. board.py runs the leaderboard; merging.py writes the same document from the folders
of its shards."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import numpy as np

from biasaudit.choosing.measures import BETTER, LABELS, carrier_of, is_ood, measure_names, measure_values, paired_changes
from biasaudit.choosing.pooling import PooledChange, SeedChange, pool_changes
from biasaudit.choosing.rule import recommend
from biasaudit.choosing.runs import CONTROL, LeaderboardSettings, run_dir
from biasaudit._core.output_set import OutputSet
from biasaudit.results import write_json_atomic

FILES = ("leaderboard.json", "leaderboard.html")
PRIMARY_MEASURE = {"worst-group": "worst_group", "bias-balanced": "bias_balanced", "ood": "ood", "follow-rate": "follow_rate"}


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
        chosen_split = settings.split if measure != "full" else also or settings.split
        kept[method] = {
            "path": path.relative_to(out).as_posix() if path.is_file() else None,
            "note": (
                f"seed {', '.join(map(str, lost))}'s model.pt was removed by an earlier run of this leaderboard with "
                "--keep best or none; rerun the method into a new folder to have it"
            )
            if lost
            else None,
            "chosen_on": f"the best seed by {measure.replace('_', '-')} on {chosen_split}, "
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
