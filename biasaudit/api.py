"""The public Python API: what `import biasaudit as ba` offers. The command line is a thin shell over these calls."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from biasaudit.data.adapter import Adapter, validate_adapter
from biasaudit._core.annotations import conforms
from biasaudit._core.arguments import (at_least, check_argument, check_keywords, checked, non_negative_finite, not_empty,
                                 one_of, output_dir, plain, positive_finite, shown)
from biasaudit.errors import ArgumentTypeError, InputError
from biasaudit.gating import GateRules
from biasaudit._core.progress import Progress
from biasaudit.results import StrPath
from biasaudit.results.audit import Audit
from biasaudit.results.comparison import Comparison
from biasaudit.results.fix_result import AlsoSplitResult, FixResult
from biasaudit.results.gate_result import GateResult
from biasaudit.results.leaderboard_result import LeaderboardResult
from biasaudit.choosing.runs import KEEP, PRIMARY
from biasaudit.training.optimizers import OPTIMIZERS

if TYPE_CHECKING:
    from biasaudit.scanning.engine import ScanConfig
    from biasaudit._core.sharding import Shard


@checked("ba.scan", split=not_empty, batch_size=at_least(1), seed=at_least(0), bootstrap=at_least(10))
def scan(model: nn.Module, adapter: Adapter, *, split: str = "test", conditions: str | Sequence[str] = "default", seed: int = 0,
         device: str | torch.device = "cpu", batch_size: int = 256, bootstrap: int = 1000, projection: str = "umap",
         progress: Progress | None = None, unimodal_models: Mapping[str, nn.Module] | None = None, distributed: bool = False,
         **settings: Any) -> Audit:
    """Audit `model` through `adapter` on one split: every condition of the grid (full, missing, noisy, the ratio
    sweep, see docs/conditions.md), bias measures, calibration, embeddings and gradient conflict.

    The model is evaluated in eval mode and its train/eval state is put back afterwards; the caller's global random
    generators are not touched. `progress(stage, done, total)` is called as the scan advances. Any other setting of
    `biasaudit.scanning.engine.ScanConfig` (min_wrong, kmeans_k, mute, group_by, ...) may be given by name. Returns an `Audit`.

    `distributed=True` splits the scan over the processes of an initialised torch.distributed process group: EVERY
    process must then call scan with the same arguments; each evaluates its shard of the batches, rank 0 merges, and
    every process returns the same Audit, equal to a single-process scan. It is off by default, because a scan called
    on one rank only (evaluation on rank 0 of a training job) would wait for the others forever: by default a process
    scans every sample alone, inside a process group or not. Outside a process group True scans alone too. `device` is
    used as given (pass each process its own GPU).

    `conditions` is a comma-separated str ("missing,noisy") or a list or tuple of the same names; `mute` a mapping of
    modality to muting impairment ({"image": "mean"}). Arguments are checked before any work: a wrong type raises
    ArgumentTypeError (a BiasAuditError and a TypeError), a wrong value InputError (a BiasAuditError and a
    ValueError), each naming the parameter; bad adapters or data raise a BiasAuditError subclass naming the input.

    Parameters: `model` and `adapter` (the model to audit and how to feed it); `split` (default "test"); `conditions`
    (see above); `seed` (every random draw); `device`; `batch_size` (samples per forward); `bootstrap` (replicates of every
    interval); `projection` ("umap" or "pca", the embedding plots); `progress` (a callback); `unimodal_models` (modality ->
    a model trained on that modality alone, for its ceiling); `distributed` (see above); `settings` (any other ScanConfig
    field by name).
    """
    from biasaudit.scanning.audit import audit_model
    from biasaudit.scanning.agreement import stopping_together
    from biasaudit._core.sharding import process_group_shard

    named = [name for name in inspect.signature(scan).parameters if name != "settings"]
    check_keywords(settings, named + sorted(_settings()), where="ba.scan")
    # In a process group every rank checks its own arguments; a mistake on one stops all of them with its sentence
    # rather than leaving the others to wait for it in the scan's first collective.
    with stopping_together(distributed and process_group_shard() is not None):
        config = _scan_config(split=split, conditions=conditions, seed=seed, device=str(device), batch_size=batch_size,
                              bootstrap_replicates=bootstrap, projection=projection, **settings)
        _check_scan(adapter, config, where="ba.scan", unimodal_models=unimodal_models)
    return Audit.from_dict(audit_model(model, adapter, config=config, checkpoint=None, progress=progress,
                                       unimodal_models=dict(unimodal_models or {}), distributed=distributed))


def _settings() -> dict[str, str]:
    """ScanConfig's fields that ba.scan takes by name, by the name it takes them under."""
    import dataclasses

    from biasaudit.scanning.engine import ScanConfig

    spelled = {"bootstrap_replicates": "bootstrap"}
    return {spelled.get(f.name, f.name): f.name for f in dataclasses.fields(ScanConfig)
            if f.name not in ("split", "conditions", "seed", "device", "batch_size", "bootstrap_replicates", "projection")}


def _check_scan(adapter: Any, config: Any, *, where: str, unimodal_models: Mapping[str, nn.Module] | None = None) -> None:
    """What the CLI checks before any work, from Python: the adapter contract (two or more modalities, ...), the
    split, the device and precision, the conditions, the mutes and the unimodal models' modalities."""
    from biasaudit.data.batches import check_split
    from biasaudit.scanning.conditions import parse_conditions
    from biasaudit.scanning.engine import check_precision, resolve_device, with_mute_overrides

    validate_adapter(adapter, source=f"given to {where} ({type(adapter).__name__})")
    check_split(adapter, config.split)
    check_precision(config.precision,
                    resolve_device(config.device, label=f"The 'device' parameter of {where}", cpu="device='cpu'"))
    parse_conditions(config.conditions, adapter.modalities)
    with_mute_overrides(adapter, config.mute, label=f"The 'mute' parameter of {where}")
    names = [m.name for m in adapter.modalities]
    unknown = [name for name in unimodal_models or {} if name not in names]
    if unknown:
        raise InputError(f"The 'unimodal_models' parameter of {where} names modality {unknown[0]!r}. "
                         f"Available: {', '.join(names)}.")


def _scan_config(*, where: str = "ba.scan", **settings: Any) -> ScanConfig:
    """ScanConfig from keyword settings, each checked against its field's type first; an unknown one lists the
    available settings. The documented forms a Python caller may use are made the CLI's: a list of conditions is
    joined with commas, a mute mapping becomes (modality, impairment) pairs, so both record the same manifest."""
    import typing

    from biasaudit.scanning.engine import ScanConfig

    spelled = {"bootstrap_replicates": "bootstrap"}
    hints = typing.get_type_hints(ScanConfig)
    if "conditions" in settings and not isinstance(settings["conditions"], str):
        settings["conditions"] = ",".join(settings["conditions"])
    mute = settings.get("mute")
    if isinstance(mute, Mapping):
        check_argument(mute, Mapping[str, str], parameter="mute", where=where)
        settings["mute"] = tuple(mute.items())
    elif mute is not None and not conforms(mute, hints["mute"]):
        raise ArgumentTypeError(f"The 'mute' parameter of {where} must be a mapping of modality to muting impairment, e.g. "
                                f"{{'image': 'mean'}}; got {shown(mute)}.")
    for name, value in settings.items():
        check_argument(value, hints[name], parameter=spelled.get(name, name), where=where)
    return ScanConfig(**plain(settings))


@checked("ba.compare")
def compare(before: Audit, after: Audit) -> Comparison:
    """After vs before: per-condition and summary changes with paired bootstrap intervals when both audits are of the
    same samples, seed and generator (otherwise plain differences and the reason), bias measures first. Refuses
    (InputError) audits of other splits or conditions.

    Parameters: `before` and `after`, two Audits of the same split and conditions (e.g. before and after a fix).
    """
    from biasaudit.comparing import compare_audits

    return Comparison.from_dict(compare_audits(before.to_dict(), after.to_dict()))


@checked("ba.gate")
def gate(current: Audit, *, rules: GateRules | Mapping[str, Any], baseline: Audit | None = None) -> GateResult:
    """Judge `current` (and its change from `baseline`) by `rules`; the same verdicts as `biasaudit gate`. `rules` is
    a GateRules, or a mapping of its keywords ({"max_gap": 5}). Rules that compare need a baseline; an unusable rule
    raises InputError naming it."""
    import dataclasses

    from biasaudit.gating import evaluate_gate

    if not isinstance(rules, GateRules):
        check_keywords(rules, [f.name for f in dataclasses.fields(GateRules) if f.name != "labels"],
                       where="The 'rules' mapping of ba.gate")
        rules = GateRules(**rules)
    if rules.is_empty:
        raise InputError("The 'rules' parameter of ba.gate holds no rule; give at least one, e.g. ba.GateRules(max_gap=5).")
    if baseline is None and rules.comparing:
        raise InputError(f"The rules {', '.join(rules.comparing)} compare against a baseline audit; "
                         "pass baseline=ba.Audit.read(path) to ba.gate, or leave them out.")
    return GateResult.from_dict(evaluate_gate(current.to_dict(), rules,
                                              baseline=baseline.to_dict() if baseline is not None else None))


@checked("ba.fix", epochs=at_least(1), lr=positive_finite, batch_size=at_least(1), optimizer=one_of(OPTIMIZERS),
         weight_decay=non_negative_finite,
         momentum=lambda value: None if 0 <= value < 1 else "a number from 0 up to (not including) 1",
         train_split=not_empty, split=not_empty,
         seed=at_least(0), bootstrap=at_least(10), state_dir=output_dir("ba.fix", "state_dir"), scan_batch_size=at_least(1),
         also_split=lambda value: None if value is None else not_empty(value))
def fix(model: nn.Module, adapter: Adapter, *, method: str = "mmdb", epochs: int = 20, lr: float = 3e-3, batch_size: int = 64,
        optimizer: str = "adam", weight_decay: float = 0.0, momentum: float = 0.0,
        train_split: str = "train", split: str = "test", conditions: str | Sequence[str] = "default", seed: int = 0,
        device: str | torch.device = "cpu",
        bootstrap: int = 1000, projection: str = "umap", options: Mapping[str, Any] | None = None, inplace: bool = False,
        before: Audit | None = None, state_dir: StrPath | None = None, progress: Progress | None = None,
        also_split: str | None = "auto", from_scratch: bool = False, scan_batch_size: int = 256, **settings: Any) -> FixResult:
    """Audit `model` on `split`, retrain it on `train_split` with `method` (see `biasaudit.training.methods.METHODS`:
    ce, mmdb, balgrad, ogm_ge, mmpareto, groupdro, jtt, dandr, dfr; `options` are the method's own, e.g. {"alpha": 0.5}
    for ogm_ge, {"gamma": 1.5, "head_mode": "separate"} for mmpareto, {"eta": 0.05} for groupdro,
    {"upweight": 10.0, "fraction": 0.5} for jtt, {"every": 5, "max_times": 3} for dandr, {"c_grid": (0.1, 1.0)} for
    dfr), audit again the same way and compare. `dfr` refits the final linear layer post hoc: the training arguments
    (epochs, lr, batch_size, optimizer, ...) are not used. The default is `biasaudit fix`'s: mmdb with its scale chosen
    on validation data ({"scale": "auto"}, training/methods.py DEFAULT_OPTIONS); any method's one gridded option may be
    "auto" (training/selection.py OPTION_GRIDS).
    Both audits take ba.scan's settings: `split`, `conditions`, `seed`, `bootstrap`, `projection`, `scan_batch_size`
    (ba.scan's `batch_size`; `batch_size` here is training's) and any other ScanConfig setting by name (min_wrong,
    kmeans_k, mute, group_by, ...), so `before` may be any audit taken with the same settings.
    `optimizer` is adam, adamw or sgd (biasaudit.training.optimizers), with `weight_decay` and, for sgd, `momentum`.

    The caller's model is left untouched unless `inplace=True` (then it is the one trained). `before` reuses an
    audit of this model taken with the same settings. `state_dir` keeps the training state after every epoch. The
    caller's global random generators are put back as they were.
    `also_split` audits a second split before and after in the same way ("auto": `test` when `split` is out of
    distribution, i.e. its bias distribution differs from train's; None: no second split); the result's `also` holds
    it and the verdict quotes its Full accuracy change. `from_scratch=True` trains from `adapter.build_model()`'s
    initial weights (seeded by `seed`), the papers' protocol; `before` is then the starting model's audit. Arguments
    are checked before any work, as ba.scan's are.

    Parameters: `model`, `adapter`; `method` and `options` (above); training: `epochs`, `lr`, `batch_size`, `optimizer`,
    `weight_decay`, `momentum`, `train_split`, `seed`, `device`, `state_dir`, `from_scratch`; audits: `split`, `conditions`,
    `bootstrap`, `projection`, `scan_batch_size`, `settings` (any other ScanConfig field), `before`, `also_split`;
    `inplace` (train the caller's model itself); `progress` (a callback).
    """
    from biasaudit.training.fix import check_before, check_method, check_plan, fix_model
    from biasaudit.training.loop import TrainConfig

    from biasaudit.training.methods import DEFAULT_OPTIONS

    named = [name for name in inspect.signature(fix).parameters if name != "settings"]
    check_keywords(settings, named + sorted(_settings()), where="ba.fix")
    device = str(device)
    scan_config = _scan_config(where="ba.fix", split=split, conditions=conditions, seed=seed, device=device,
                               bootstrap_replicates=bootstrap, projection=projection, batch_size=scan_batch_size, **settings)
    options = {**DEFAULT_OPTIONS.get(method, {}), **(options or {})}
    _check_scan(adapter, scan_config, where="ba.fix")
    from biasaudit.data.batches import check_split

    check_split(adapter, train_split)
    train_config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device, split=train_split,
                               optimizer=optimizer, weight_decay=weight_decay, momentum=momentum)
    check_method(method, dict(options or {}))  # before the copy and the audits: a typo costs nothing
    if before is not None:
        check_before(before.to_dict(), config=scan_config, checkpoint_sha=None, named="before",
                     remedy="pass an audit taken with the same settings, or none")
    trained = model if inplace else copy.deepcopy(model)
    check_plan(adapter, method=method, split=split, also_split=also_split, from_scratch=from_scratch)
    outcome = fix_model(trained, adapter, method=method, method_options=dict(options or {}), train_config=train_config,
                        scan_config=scan_config, before=before.to_dict() if before is not None else None, state_dir=state_dir,
                        progress=progress, also_split=also_split, from_scratch=from_scratch)
    also = outcome.also
    return FixResult(model=trained, before=Audit.from_dict(outcome.before), after=Audit.from_dict(outcome.after),
                     comparison=Comparison.from_dict(outcome.comparison),
                     train_log={"training": outcome.training, "steps": outcome.steps},
                     also=AlsoSplitResult(split=also.split, before=Audit.from_dict(also.before),
                                          after=Audit.from_dict(also.after),
                                          comparison=Comparison.from_dict(also.comparison)) if also is not None else None)


def _grids_problem(value: Any) -> str | None:
    """None when `value` maps methods with a gridded option to one or more distinct positive numbers."""
    from biasaudit.training.selection import OPTION_GRIDS, check_grid

    expected = f"a mapping of method ({', '.join(OPTION_GRIDS)}) to one or more distinct positive, finite numbers"
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return expected
    for method, grid in value.items():
        try:
            check_grid(method, grid)
        except InputError:
            return expected
    return None


@checked("ba.leaderboard", seeds=lambda value: None if len(value) >= 2 and len(set(value)) == len(value) and min(value) >= 0
         else "at least two different seeds of 0 or more", split=not_empty, epochs=at_least(1), lr=positive_finite,
         batch_size=at_least(1), optimizer=one_of(OPTIMIZERS), bootstrap=at_least(10), primary=one_of(PRIMARY), keep=one_of(KEEP),
         max_full_drop=non_negative_finite, out=output_dir("ba.leaderboard", "out"), jobs=at_least(1), grids=_grids_problem,
         shard=lambda value: None if value is None or _shard_of(value) is not None
         else "I/N with N >= 1 and I from 0 to N - 1, e.g. '0/4'")
def leaderboard(model: nn.Module, adapter: Adapter, *, out: StrPath,
                methods: Sequence[str] = ("ce", "mmdb", "balgrad", "ogm_ge", "mmpareto", "groupdro", "jtt", "dandr", "dfr"),
                seeds: Sequence[int] = (0, 1, 2), split: str = "test", epochs: int = 20, lr: float = 3e-3, batch_size: int = 64,
                optimizer: str = "adam", bootstrap: int = 1000, primary: str = "worst-group", max_full_drop: float = 1.0,
                keep: str = "best", device: str | torch.device = "cpu", jobs: int = 1,
                grids: Mapping[str, Sequence[float]] | None = None, shard: str | None = None,
                progress: Progress | None = None) -> LeaderboardResult:
    """Fix `model` with every method in `methods` for every seed, compare each with the `ce` control (always included)
    seed by seed, pool the changes over seeds and samples (a hierarchical bootstrap, biasaudit/choosing/pooling.py),
    and recommend a method only when a bias measure improves beyond that noise on most seeds and Full accuracy
    (in distribution, on `test`, when `split` is out of distribution) does not fall by more than `max_full_drop`
    points (biasaudit/choosing/rule.py). Writes leaderboard.json, leaderboard.html and every run into `out`; a
    rerun with the same settings reuses the finished runs. `jobs` > 1 trains that many runs at once in spawned
    processes (at most one per CPU core, or one per GPU; the adapter must then be importable by its module). The
    caller's model is never trained.

    Each method's own option (MMDB's scale, OGM-GE's alpha, MMPareto's gamma, Group DRO's eta, JTT's upweight) is
    chosen per run on `val` (else a seeded 20% of train) from a small grid (biasaudit.training.selection.OPTION_GRIDS);
    `grids` replaces a method's grid, e.g. {"ogm_ge": (0.1, 0.5)}; a one-value grid fixes the option.

    `shard` ("I/N", a job array's task I of N): train only every N-th (method, seed) run from the I-th into `out` and
    write its record `shard-I-of-N.json` (the result's `json_path`; `recommended` is None, `html_path` None); when
    every shard has finished, `merge_leaderboard` of their folders writes the leaderboard.

    Parameters: `model` and `adapter` (the starting model, never trained itself); `out` (the folder of the runs and the
    document); `methods` and `seeds` (every method runs with every seed; the control `ce` always); `split` (evaluated; never
    val); training of every run: `epochs`, `lr`, `batch_size`, `optimizer`, `device`; `bootstrap` (replicates of every
    audit); the rule: `primary` (the tie-breaking bias measure: worst-group, bias-balanced, ood or follow-rate) and
    `max_full_drop` (points); `keep` ("best", "all" or "none" checkpoints); `jobs`, `grids`, `shard` (above); `progress`.
    """
    from biasaudit.choosing.board import run_leaderboard
    from biasaudit.choosing.runs import CONTROL, LeaderboardSettings, default_grids

    settings = LeaderboardSettings(methods=(CONTROL, *[m for m in methods if m != CONTROL]), seeds=tuple(seeds), split=split,
                                   epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, bootstrap=bootstrap,
                                   primary=primary, max_full_drop=max_full_drop, keep=keep,
                                   grids={**default_grids(), **{m: tuple(float(v) for v in g) for m, g in (grids or {}).items()}})
    device = str(device)
    _check_scan(adapter, settings.scan_config(settings.seeds[0], device), where="ba.leaderboard")  # as ba.fix, before any work
    part = _shard_of(shard) if shard is not None else None
    document = run_leaderboard(model, adapter, settings, out=out, device=device, progress=progress, jobs=jobs, shard=part)
    if part is not None:
        return LeaderboardResult(recommended=None,
                                 verdict=f"Shard {part.index}/{part.count}: {len(document['runs'])} runs finished; "
                                 "merge every shard's folder (merge_leaderboard, or biasaudit merge) for the leaderboard.",
                                 reasons=(), json_path=Path(out) / f"shard-{part.index}-of-{part.count}.json", html_path=None,
                                 document=document)
    return _leaderboard_result(document, Path(out))


def _leaderboard_result(document: Mapping[str, Any], out: Path) -> LeaderboardResult:
    recommendation = document["recommendation"]
    return LeaderboardResult(recommended=recommendation["method"], verdict=document["verdict"],
                             reasons=tuple(recommendation["reasons"]), json_path=out / "leaderboard.json",
                             html_path=out / "leaderboard.html", document=document)


def _shard_of(text: Any) -> Shard | None:
    from biasaudit._core.sharding import parse_shard

    try:
        return parse_shard(text) if isinstance(text, str) else None
    except InputError:
        return None


@checked("ba.merge_leaderboard", folders=lambda value: None if len(value) >= 1 else "one or more folders",
         out=output_dir("ba.merge_leaderboard", "out"))
def merge_leaderboard(folders: Sequence[StrPath], *, out: StrPath) -> LeaderboardResult:
    """The leaderboard of a sharded run (`leaderboard(..., shard="I/N")` per job-array task): reads every shard's
    folder, checks that they are one leaderboard's (same settings, every shard's record, every run finished), copies
    the runs into `out` unless it is a shard's folder, and writes leaderboard.json and leaderboard.html exactly as one
    process would have. Needs no model, adapter or training.

    Parameters: `folders` (the --out folders of every shard, in any order); `out` (where the document goes; may be
    one of the shards' folders).
    """
    from biasaudit.choosing.merging import merge_leaderboard as merge

    return _leaderboard_result(merge(folders, out=out), Path(out))
