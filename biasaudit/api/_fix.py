"""`ba.fix`: retrain a model (in memory, or a checkpoint file into an output folder) with a method, and prove the change."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biasaudit._core.arguments import (
    at_least,
    checked,
    non_negative_finite,
    not_empty,
    one_of,
    output_dir,
    positive_finite,
)
from biasaudit._core.progress import Progress
from biasaudit.api._scan import checked_scan
from biasaudit.data.adapter import Adapter
from biasaudit.errors import InputError
from biasaudit.results import StrPath
from biasaudit.results.audit import Audit
from biasaudit.results.comparison import Comparison
from biasaudit.results.fix_result import AlsoSplitResult, FixResult
from biasaudit.training.feature_cache import MODES as CACHE_MODES
from biasaudit.training.feature_cache import CacheSettings, check_cache_settings
from biasaudit.training.optimizers import OPTIMIZERS


@checked(
    "ba.fix",
    epochs=at_least(1),
    lr=positive_finite,
    batch_size=at_least(1),
    shuffle_buffer=at_least(1),
    optimizer=one_of(OPTIMIZERS),
    weight_decay=non_negative_finite,
    momentum=lambda value: None if 0 <= value < 1 else "a number from 0 up to (not including) 1",
    train_split=not_empty,
    split=not_empty,
    seed=at_least(0),
    bootstrap=at_least(10),
    state_dir=output_dir("ba.fix", "state_dir"),
    scan_batch_size=at_least(1),
    also_split=lambda value: None if value is None else not_empty(value),
    out=output_dir("ba.fix", "out"),
    selection_min_group=at_least(1),
    feature_cache=one_of(CACHE_MODES),
    cache_dir=output_dir("ba.fix", "cache_dir"),
    cache_max_gb=positive_finite,
)
def fix(
    model: nn.Module | StrPath,
    adapter: Adapter | str,
    *,
    method: str = "mmdb",
    epochs: int = 20,
    lr: float = 3e-3,
    batch_size: int = 64,
    shuffle_buffer: int = 100_000,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    train_split: str = "train",
    split: str = "test",
    conditions: str | Sequence[str] = "default",
    seed: int = 0,
    device: str | torch.device = "cpu",
    bootstrap: int = 1000,
    projection: str = "umap",
    options: Mapping[str, Any] | None = None,
    inplace: bool = False,
    before: Audit | StrPath | None = None,
    state_dir: StrPath | None = None,
    progress: Progress | None = None,
    also_split: str | None = "auto",
    from_scratch: bool = False,
    scan_batch_size: int = 256,
    out: StrPath | None = None,
    resume: bool = False,
    selection_min_group: int = 1,
    trust_checkpoint: bool = False,
    distributed: bool = False,
    feature_cache: str = "auto",
    cache_dir: StrPath | None = None,
    cache_max_gb: float = 4.0,
    **settings: Any,
) -> FixResult:
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
    `precision` (a setting, "fp32" by default) is the whole fix's: "bf16" or "fp16" runs both audits' forwards and the
    training steps under torch.autocast to that dtype (weights and optimizer stay float32; fp16 scales the losses with a
    gradient scaler, which skips a step whose gradients overflow, marked "skipped" in the train log). CUDA only.
    Training data that a DataLoader over a map-style dataset gives are shuffled by index, a batch in memory at a time;
    other data through a buffer of `shuffle_buffer` samples (a true shuffle within it, an approximation beyond).

    The caller's model is left untouched unless `inplace=True` (then it is the one trained). `before` reuses an
    audit of this model taken with the same settings. `state_dir` keeps the training state after every epoch. The
    caller's global random generators are put back as they were.
    `also_split` audits a second split before and after in the same way ("auto": `test` when `split` is out of
    distribution, i.e. its bias distribution differs from train's; None: no second split); the result's `also` holds
    it and the verdict quotes its Full accuracy change. `from_scratch=True` trains from `adapter.build_model()`'s
    initial weights (seeded by `seed`), the papers' protocol; `before` is then the starting model's audit. Arguments
    are checked before any work, as ba.scan's are.

    `model` may be the path of a checkpoint and `adapter` an adapter spec, as for `scan`. `out` (with a checkpoint)
    writes what `biasaudit fix --out` writes into that folder as one set: model.pt (a drop-in state dict; the input
    checkpoint is never overwritten), before.json, after.json and after.html, compare.json and compare.html,
    train_log.json; the training state is kept in `out`/state, and `resume=True` continues an interrupted run from its
    last finished epoch. `before` may then also be the path of an audit of the checkpoint (its SHA-256 must match).
    `selection_min_group` is the smallest (label, bias value) group an "auto" option's validation score counts.

    Parameters: `model`, `adapter`; `out`, `resume`, `trust_checkpoint`, `selection_min_group` (above);
    `method` and `options` (above); training: `epochs`, `lr`, `batch_size`, `shuffle_buffer`, `optimizer`,
    `weight_decay`, `momentum`, `train_split`, `seed`, `device`, `state_dir`, `from_scratch`; audits: `split`, `conditions`,
    `bootstrap`, `projection`, `scan_batch_size`, `settings` (any other ScanConfig field), `before`, `also_split`;
    `inplace` (train the caller's model itself); `progress` (a callback); `distributed`, `feature_cache`, `cache_dir`,
    `cache_max_gb` (below).

    `distributed=True` runs the fix over the processes of an initialised torch.distributed process group (torchrun;
    EVERY process calls ba.fix with the same arguments): the audits are sharded scans, the training is data-parallel
    (each global batch split over the processes, gradients averaged: the one-process steps on the same batches, see
    docs/scale.md), and with `out` only rank 0 writes. Every process returns the same result.

    `feature_cache` ("auto", "on" or "off"): the outputs of the model's frozen parts (modules whose parameters are all
    frozen, e.g. a pretrained encoder under linear probing) on the training samples are computed once and stand in for
    those parts in later epochs, giving the very weights training without the cache gives. Only for an adapter that
    declares `deterministic_data = True` (no random augmentation); "auto" caches what it can and records why not,
    "on" refuses what it cannot. Kept in memory, or in memory-mapped files under `cache_dir`; at most `cache_max_gb`
    GiB (a larger cache is not built). What it did is in the train log's `feature_cache`.
    """
    from biasaudit.data.batches import check_split
    from biasaudit.training.fix import fix_model
    from biasaudit.training.fix_checks import check_before, check_method, check_plan
    from biasaudit.training.train_config import TrainConfig
    from biasaudit.training.methods import DEFAULT_OPTIONS

    device = str(device)
    loaded, spec, scan_config = checked_scan(
        fix,
        adapter,
        settings,
        unimodal_models=None,
        split=split,
        conditions=conditions,
        seed=seed,
        device=device,
        bootstrap_replicates=bootstrap,
        projection=projection,
        batch_size=scan_batch_size,
    )
    options = {**DEFAULT_OPTIONS.get(method, {}), **(options or {})}
    check_split(loaded, train_split)
    train_config = TrainConfig(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        device=device,
        split=train_split,
        optimizer=optimizer,
        weight_decay=weight_decay,
        momentum=momentum,
        # One precision for the whole fix: the audits' forwards (ScanConfig, checked above: 16 bits need CUDA) and training.
        precision=settings.get("precision", "fp32"),
    )
    check_method(method, dict(options or {}))  # before the copy and the audits: a typo costs nothing
    cache = CacheSettings(
        mode=feature_cache,
        directory=Path(cache_dir) if cache_dir is not None else None,
        max_bytes=max(1, int(cache_max_gb * 2**30)),
    )
    check_cache_settings(cache)  # a cache directory that is a file or cannot be written: before any work
    if out is not None or resume:
        return _fix_files(
            model,
            loaded,
            spec,
            method=method,
            options=options,
            train_config=train_config,
            scan_config=scan_config,
            out=out,
            before=before,
            resume=resume,
            selection_min_group=selection_min_group,
            trust_checkpoint=trust_checkpoint,
            progress=progress,
            also_split=also_split,
            from_scratch=from_scratch,
            distributed=distributed,
            cache=cache,
        )
    if isinstance(before, Audit):
        check_before(
            before.to_dict(),
            config=scan_config,
            checkpoint_sha=None,
            named="before",
            remedy="pass an audit taken with the same settings, or none",
        )
    elif before is not None:
        raise InputError("The 'before' parameter of ba.fix is a path, which is read only with out=...; pass ba.Audit.read(path).")
    if not isinstance(model, nn.Module):
        from biasaudit.scanning.audit import load_model

        model, inplace = load_model(Path(model), loaded, trust=trust_checkpoint), True
    trained = model if inplace else copy.deepcopy(model)
    check_plan(loaded, method=method, split=split, also_split=also_split, from_scratch=from_scratch)
    outcome = fix_model(
        trained,
        loaded,
        method=method,
        method_options=dict(options or {}),
        train_config=train_config,
        scan_config=scan_config,
        before=before.to_dict() if before is not None else None,
        state_dir=state_dir,
        progress=progress,
        also_split=also_split,
        from_scratch=from_scratch,
        min_group=selection_min_group,
        adapter_spec=spec,
        distributed=distributed,
        cache=cache,
    )
    return _result(trained, outcome)


def _result(model: nn.Module, outcome: Any) -> FixResult:
    also = outcome.also
    return FixResult(
        model=model,
        before=Audit.from_dict(outcome.before),
        after=Audit.from_dict(outcome.after),
        comparison=Comparison.from_dict(outcome.comparison),
        train_log={"training": outcome.training, "steps": outcome.steps},
        also=AlsoSplitResult(
            split=also.split,
            before=Audit.from_dict(also.before),
            after=Audit.from_dict(also.after),
            comparison=Comparison.from_dict(also.comparison),
        )
        if also is not None
        else None,
    )


def _fix_files(
    model: nn.Module | StrPath,
    adapter: Adapter,
    spec: str | None,
    *,
    method: str,
    options: Mapping[str, Any],
    train_config: Any,
    scan_config: Any,
    out: StrPath | None,
    before: Audit | StrPath | None,
    resume: bool,
    selection_min_group: int,
    trust_checkpoint: bool,
    progress: Progress | None,
    also_split: str | None,
    from_scratch: bool,
    distributed: bool,
    cache: Any,
) -> FixResult:
    """`fix` of a checkpoint file into `out`: the files `biasaudit fix` writes, and the same result."""
    import tempfile

    from biasaudit.training.fix_outputs import run_fix

    if isinstance(model, nn.Module) or out is None:
        raise InputError(
            "The 'out' parameter of ba.fix writes a fix of a checkpoint file (and 'resume' continues one): pass "
            "the checkpoint's path as model, and out."
        )
    with tempfile.TemporaryDirectory() as scratch:
        if isinstance(before, Audit):  # read back with the file's checks: the same settings and checkpoint
            before = before.to_json(Path(scratch) / "before.json")
        written = run_fix(
            Path(model),
            adapter,
            method=method,
            method_options=dict(options),
            train_config=train_config,
            scan_config=scan_config,
            out_dir=Path(out),
            adapter_spec=spec,
            trust=trust_checkpoint,
            before_path=Path(before) if before is not None else None,
            resume=resume,
            min_group=selection_min_group,
            progress=progress,
            also_split=also_split,
            from_scratch=from_scratch,
            distributed=distributed,
            cache=cache,
        )
    return _result(written.model, written.outcome)
