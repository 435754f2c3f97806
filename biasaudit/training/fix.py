"""`fix`: audit before, retrain with a method, export a drop-in state dict, audit after with identical conditions,
split and seed, and compare. The checks before any work are fix_checks.py's, what the audits add fix_audits.py's, and
the written output set fix_outputs.py's."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from biasaudit.comparing import compare_audits
from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import shares_reads
from biasaudit.errors import InputError
from biasaudit.scanning.audit import audit_model
from biasaudit.scanning.config import ScanConfig, resolve_device
from biasaudit._core.progress import Progress
from biasaudit.training.diagnosis import TreatmentWarning, diagnosis, treatment_warnings
from biasaudit.training.driver import scored_as_trained
from biasaudit.training.fix_audits import (
    AUTO,
    FROM_SCRATCH,
    ONE_RUN,
    carrier_of,
    dominant_of,
    from_scratch_labelled,
    resolved_also_split,
    with_also_split,
)
from biasaudit.training.fix_checks import check_plan, check_resumable, driver_flag, is_post_hoc, refuse_post_hoc_resume
from biasaudit.training.data_parallel import broadcast_start, check_data_parallel, training_processes
from biasaudit.training.epoch_batches import epoch_shape
from biasaudit.training.feature_cache import CacheSettings, check_cache_plan
from biasaudit.training.loop import train
from biasaudit.training.precision import StepPrecision
from biasaudit.training.run_cache import refused_precision
from biasaudit.training.methods import make_method
from biasaudit.training.train_config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FixOutcome:
    """What a fix produced in memory (the model trained in place); `fix_model`'s one return type."""

    before: dict[str, Any]
    after: dict[str, Any]
    training: dict[str, Any]
    steps: list[dict[str, Any]]
    comparison: dict[str, Any]
    also: AlsoSplit | None = None


@dataclass(frozen=True)
class AlsoSplit:
    """The second split's before and after audits and their comparison (`also_split`), e.g. the in-distribution
    test split beside an OOD one: a fix that raises OOD accuracy may cost accuracy in distribution."""

    split: str
    before: dict[str, Any]
    after: dict[str, Any]
    comparison: dict[str, Any]


class AlsoPlan(NamedTuple):
    """The second split to audit (fix_model's `also_split`): its name, its scan config and its before-audit."""

    split: str
    config: ScanConfig
    before: dict[str, Any]


def reinitialise(model: nn.Module, adapter: Adapter, *, seed: int) -> None:
    """--from-scratch: the model's weights (and buffers) become those of a fresh build_model(), drawn with the run
    seed under generators of its own: the papers' protocol, training from initialisation rather than fine-tuning."""
    from biasaudit.training import rng_states

    with rng_states.seeded_run(seed):
        fresh = adapter.build_model()
    try:
        model.load_state_dict(fresh.state_dict())
    except RuntimeError as exc:
        raise InputError(
            f"--from-scratch: the adapter's build_model() builds another architecture than the checkpoint's "
            f"({str(exc).splitlines()[0]})."
        ) from exc


@shares_reads  # the audits' JSD priors and MMDB's margins read train's labels once
def fix_model(
    model: nn.Module,
    adapter: Adapter,
    *,
    method: str,
    method_options: Mapping[str, Any],
    train_config: TrainConfig,
    scan_config: ScanConfig,
    before: dict[str, Any] | None = None,
    state_dir: str | Path | None = None,
    resume: bool = False,
    min_group: int = 1,
    progress: Progress | None = None,
    checkpoint: str | Path | None = None,
    adapter_spec: str | None = None,
    prefix_removed: str | None = None,
    after_checkpoint: Callable[[nn.Module], Path | None] | None = None,
    also_split: str | None = AUTO,
    from_scratch: bool = False,
    also_before: dict[str, Any] | None = None,
    option_grid: Sequence[float] | None = None,
    distributed: bool = False,
    cache: CacheSettings | None = None,
) -> FixOutcome:
    """Audit (unless `before` is given), retrain `model` in place with `method`, audit again with the same settings and
    compare. Writes nothing but the training state in `state_dir` (when given). `after_checkpoint(model)` may save the
    fixed weights and return their path, which the after audit's manifest then names and hashes.

    `also_split`: a second split audited before and after in the same way (auto: `test` when the audited split is out
    of distribution); its comparison is in the outcome and its Full accuracy change in the verdict (`also_before`
    reuses an audit of that split taken the same way, as `before` does for the main one). `from_scratch`:
    train from build_model()'s initial weights (seeded by the run seed) instead of fine-tuning the model; the
    before-audit is then the starting checkpoint's, and the comparison says so. `option_grid`: the values an "auto"
    option is chosen from (default: selection.OPTION_GRIDS). `distributed`: over the processes of the initialised
    process group, the audits are sharded scans and the training is data-parallel (data_parallel.py); every process
    returns the same outcome, and only rank 0 writes the training state. `cache`: the frozen-encoder feature cache's
    settings (training/feature_cache.py; None: off); what it did is in the outcome's training record."""
    resume_dir = None
    if resume:
        if state_dir is None:
            raise InputError("resume needs the state_dir of the run to continue.")
        resume_dir = Path(state_dir)
    post_hoc = is_post_hoc(method)
    refuse_post_hoc_resume(method, resume)
    check_plan(adapter, method=method, split=scan_config.split, also_split=also_split, from_scratch=from_scratch)
    if resume_dir is not None:  # before the before-audit: a resume with nothing to resume is a mistake, found at once
        world = training_processes(distributed).world
        check_resumable(resume_dir, method=method, options=method_options, grid=option_grid, processes=world)
    from biasaudit.training.selection import auto_option, choose_option, placeholder_options, selection_plan

    auto = auto_option(method, method_options)
    method_options = placeholder_options(method, method_options)
    discovers_bias = method == "mmdb" or driver_flag(method, "discovers_bias")
    if discovers_bias and method_options.get("kmeans_k") is None:
        method_options["kmeans_k"] = scan_config.kmeans_k  # discovered bias: the clusters the before audit's JSD used
    fixer = make_method(method, **method_options)
    if getattr(fixer, "validates", False) and "val" not in adapter.splits and train_config.holdout == 0:
        # A method that validates during training (D&R's purity gap) needs samples it never trains on: without a val
        # split, the seeded held-out part of train that an auto option uses (selection.selection_plan).
        train_config = selection_plan(adapter, train_config)[0]
    check = getattr(fixer, "check", None)
    if callable(check):
        check(model, adapter)  # a missing hook or a model the method cannot train: before the audit, which can take long
    check_config = getattr(fixer, "check_config", None)
    if callable(check_config) and not post_hoc:
        check_config(train_config)  # e.g. JTT's two stages need the epochs for both
    if cache is not None and not post_hoc:
        check_cache_plan(model, adapter, cache, config=train_config, device=resolve_device(train_config.device))
        refusal = refused_precision(cache, train_config.precision)
        if refusal is not None:
            raise InputError(refusal)
    if not post_hoc:  # fp16's refusals (float16 weights, a driver without loss_scale), before the audits
        trainable = [p for p in model.parameters() if p.requires_grad]
        StepPrecision(train_config.precision, resolve_device(train_config.device), trainable=trainable, method=fixer)
    if distributed:  # rank 0's weights on every process (a process group's ranks may each build their own model)
        broadcast_start([*model.parameters(), *model.buffers()], training_processes(True))
    if distributed and not post_hoc:  # a batch some process would get no row of: before the audits, not after them
        smallest = epoch_shape(adapter, config=train_config).smallest
        check_data_parallel(training_processes(True), smallest=smallest, batch_size=train_config.batch_size)
    if from_scratch and discovers_bias and (method_options.get("bias") == "kmeans" or not getattr(adapter, "bias_key", None)):
        # The bias values would be k-means clusters of the re-initialised, random branch features.
        raise InputError(
            f"--from-scratch with {method}'s discovered bias values (k-means of a branch's features; the adapter has "
            "no bias_key or --bias kmeans) would cluster a random model's features; give the adapter a bias_key "
            "or fine-tune without --from-scratch."
        )
    if before is None:
        before = audit_model(
            model,
            adapter,
            config=scan_config,
            checkpoint=checkpoint,
            prefix_removed=prefix_removed,
            adapter_spec=adapter_spec,
            progress=progress,
            distributed=distributed,
        )
    also = resolved_also_split(also_split, before, adapter, split=scan_config.split)
    also_plan = None
    if also is not None:
        also_config = replace(scan_config, split=also)
        if also_before is None or also_before["manifest"]["config"].get("split") != also:
            also_before = audit_model(
                model,
                adapter,
                config=also_config,
                checkpoint=checkpoint,
                prefix_removed=prefix_removed,
                adapter_spec=adapter_spec,
                progress=progress,
            )
        also_plan = AlsoPlan(also, also_config, also_before)
    found = treatment_warnings(method, before)
    for sentence in found:  # before training: the before-audit already shows it (training/diagnosis.py)
        warnings.warn(sentence, TreatmentWarning, stacklevel=2)
    if discovers_bias:
        # Without a bias_key, MMDB (Group DRO, DFR) clusters the branch of one modality: the one that carries the bias
        # (the carrier test of the before audit) when known, else the one the model leans on (methods.md section 3);
        # a caller who names the modality (option `dominant`) overrides the audit.
        method_options["dominant"] = method_options.get("dominant") or carrier_of(before) or dominant_of(before)
        fixer = make_method(method, **method_options)
    if from_scratch:
        reinitialise(model, adapter, seed=train_config.seed)
    start = time.perf_counter()
    cached: list[dict[str, Any]] = []  # what the feature cache did in each training (one per "auto" candidate)
    selection = None
    trained = model
    steps: list[dict[str, Any]]
    if auto is not None:
        # The winning candidate is kept (it is the training of the chosen value from the same start): no extra run.
        choice = choose_option(
            model,
            adapter,
            method=method,
            options=method_options,
            config=train_config,
            grid=option_grid,
            min_group=min_group,
            progress=progress,
            state_dir=state_dir,
            resume=resume,
            distributed=distributed,
            cache=cache,
            cache_report=cached.append,
        )
        selection, trained, fixer, steps = choice.selection, choice.model, choice.method, choice.steps
        method_options[auto] = selection["chosen"]
        train_config = selection_plan(adapter, train_config)[0]  # the kept candidate's: without val, train less its held-out part
    elif post_hoc:
        # DFR: the one method that repairs a checkpoint without retraining; no step to log (its figures are its settings).
        fixer.refit(model, adapter, config=train_config)
        steps = []
    else:
        steps = train(
            model,
            adapter,
            fixer,
            config=train_config,
            state_dir=state_dir,
            resume=resume,
            progress=progress,
            distributed=distributed,
            cache=cache,
            cache_report=cached.append,
        )
    fixer.export(trained, adapter)
    train_seconds = time.perf_counter() - start
    log.info("%s %s in %.1f s", method, "refitted" if post_hoc else f"trained {train_config.epochs} epochs", train_seconds)
    not_finite = [
        name for name, value in trained.state_dict().items() if value.is_floating_point() and not bool(value.isfinite().all())
    ]
    if not_finite:
        kept = f"; the training state is in {state_dir}" if state_dir is not None else ""
        raise InputError(
            f"Training diverged: {len(not_finite)} tensors of the fixed model hold NaN or infinite values (first "
            f"{not_finite[0]}); no results were written (lower the learning rate){kept}."
        )
    if trained is not model:
        model.load_state_dict(trained.state_dict())  # the caller's model is the one fixed, in place
    saved = after_checkpoint(trained) if after_checkpoint is not None else None
    with scored_as_trained(fixer, trained, adapter) as scored:
        after = audit_model(
            trained,
            adapter,
            config=scan_config,
            checkpoint=saved,
            adapter_spec=adapter_spec,
            progress=progress,
            distributed=distributed,
        )
        also_after = (
            audit_model(
                trained,
                adapter,
                config=also_plan.config,
                checkpoint=saved,
                adapter_spec=adapter_spec,
                progress=progress,
                distributed=distributed,
            )
            if also_plan is not None
            else None
        )
    for audit in (after, also_after):
        if scored is not None and audit is not None:
            audit["manifest"]["scored_model"] = scored
    training = {
        "method": method,
        "settings": fixer.settings(),
        "after_audit_scores": scored or "model.pt as written",
        "option_selection": selection,
        "config": train_config.to_dict(),
        # Data-parallel over this many processes (data_parallel.py): the steps of one process on the same batches.
        "processes": training_processes(distributed).world if distributed and not post_hoc else 1,
        "feature_cache": cached[-1] if cached else None,
        "wall_time_s": round(train_seconds, 3),
        "source_checkpoint": str(checkpoint) if checkpoint is not None else None,
        "start": FROM_SCRATCH if from_scratch else "the checkpoint's weights (fine-tuning)",
        "diagnosis": {**diagnosis(before), "warnings": found},
    }
    if post_hoc:
        training["loop"] = (
            f"none: {method} refits the final linear layer post hoc; the training options (epochs, lr, batch size, "
            "optimizer, weight decay, momentum) were not used"
        )
    after["manifest"]["training"] = training
    comparison = compare_audits(before, after)
    comparison["verdict_sentences"] = [*comparison["verdict_sentences"], ONE_RUN]
    also_outcome = None
    if also_plan is not None and also_after is not None:  # also_after is audited exactly when there is an also_plan
        also_after["manifest"]["training"] = training
        also_comparison = compare_audits(also_plan.before, also_after)
        also_comparison["verdict_sentences"] = [*also_comparison["verdict_sentences"], ONE_RUN]
        if from_scratch:
            also_comparison = from_scratch_labelled(also_comparison)
        also_outcome = AlsoSplit(split=also_plan.split, before=also_plan.before, after=also_after, comparison=also_comparison)
        comparison = with_also_split(comparison, also_outcome.comparison)
    if from_scratch:
        comparison = from_scratch_labelled(comparison)
    return FixOutcome(before=before, after=after, training=training, steps=steps, comparison=comparison, also=also_outcome)
