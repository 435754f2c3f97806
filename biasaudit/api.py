"""The public Python API: what `import biasaudit as ba` offers. The command line is a thin shell over these calls."""

from __future__ import annotations

import copy
import os
from typing import Any, Mapping

from torch import nn

from biasaudit.adapter import Adapter
from biasaudit.gating import GateRules
from biasaudit.progress import Progress
from biasaudit.results.audit import Audit
from biasaudit.results.comparison import Comparison
from biasaudit.results.fix_result import FixResult
from biasaudit.results.gate_result import GateResult


def scan(model: nn.Module, adapter: Adapter, *, split: str = "test", conditions: str = "default", seed: int = 0,
         device: str = "cpu", batch_size: int = 256, bootstrap: int = 1000, projection: str = "umap",
         progress: Progress | None = None, unimodal_models: Mapping[str, nn.Module] | None = None, distributed: bool = True,
         **settings) -> Audit:
    """Audit `model` through `adapter` on one split: every condition of the grid (full, missing, noisy, the ratio
    sweep, see `--conditions` in the README), bias measures, calibration, embeddings and gradient conflict.

    The model is evaluated in eval mode and its train/eval state is put back afterwards; the caller's global random
    generators are not touched. `progress(stage, done, total)` is called as the scan advances. Any other setting of
    `biasaudit.scanning.ScanConfig` (min_wrong, kmeans_k, mute, group_by, ...) may be given by name. Returns an `Audit`.

    Inside an initialised torch.distributed process group of several processes, `distributed=True` (the default) splits
    the scan: EVERY process must call scan with the same arguments; each evaluates its shard of the batches, rank 0
    merges, and every process returns the same Audit, equal to a single-process scan. Called on one rank only (e.g.
    evaluation on rank 0 of a training job) it would wait for the others forever: pass `distributed=False` there, and
    that process scans every sample alone. `device` is used as given (pass each process its own GPU).
    Raises BiasAuditError (a subclass naming the input) for bad settings, adapters or data."""
    from biasaudit.audit import audit_model

    config = _scan_config(split=split, conditions=conditions, seed=seed, device=device, batch_size=batch_size,
                          bootstrap_replicates=bootstrap, projection=projection, **settings)
    return Audit.from_dict(audit_model(model, adapter, config=config, checkpoint=None, progress=progress,
                                       unimodal_models=dict(unimodal_models or {}), distributed=distributed))


def _scan_config(**settings: Any):
    """ScanConfig from keyword settings; an unknown or repeated one is an InputError naming the available settings."""
    import dataclasses

    from biasaudit.errors import InputError
    from biasaudit.scanning import ScanConfig

    known = {f.name for f in dataclasses.fields(ScanConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InputError(f"scan has no setting {unknown[0]!r}. Available: {', '.join(sorted(known - {'bootstrap_replicates'}) + ['bootstrap'])}.")
    return ScanConfig(**settings)


def compare(before: Audit, after: Audit) -> Comparison:
    """After vs before: per-condition and summary changes with paired bootstrap intervals when both audits are of the
    same samples, seed and generator (otherwise plain differences and the reason), bias measures first. Refuses
    (InputError) audits of other splits or conditions."""
    from biasaudit.comparing import compare_audits

    return Comparison.from_dict(compare_audits(before.to_dict(), after.to_dict()))


def gate(current: Audit, *, rules: GateRules, baseline: Audit | None = None) -> GateResult:
    """Judge `current` (and its change from `baseline`) by `rules`; the same verdicts as `biasaudit gate`. Rules
    that compare need a baseline; an unusable rule raises InputError naming it."""
    from biasaudit.gating import evaluate_gate

    return GateResult.from_dict(evaluate_gate(current.to_dict(), rules, baseline=baseline.to_dict() if baseline is not None else None))


def fix(model: nn.Module, adapter: Adapter, *, method: str = "balgrad", epochs: int = 20, lr: float = 3e-3, batch_size: int = 64,
        train_split: str = "train", split: str = "test", conditions: str = "default", seed: int = 0, device: str = "cpu",
        bootstrap: int = 1000, projection: str = "umap", options: Mapping[str, Any] | None = None, inplace: bool = False,
        before: Audit | None = None, state_dir: str | os.PathLike | None = None, progress: Progress | None = None) -> FixResult:
    """Audit `model` on `split`, retrain it on `train_split` with `method` (see `biasaudit.training.methods.METHODS`;
    `options` are the method's own, e.g. {"alpha": 1.0} for balgrad), audit again the same way and compare.

    The caller's model is left untouched unless `inplace=True` (then it is the one trained). `before` reuses an
    audit of this model taken with the same settings. `state_dir` keeps the training state after every epoch. The
    caller's global random generators are put back as they were."""
    from biasaudit.fixing import check_before, check_method, fix_model
    from biasaudit.training.loop import TrainConfig

    scan_config = _scan_config(split=split, conditions=conditions, seed=seed, device=device, bootstrap_replicates=bootstrap,
                               projection=projection)
    train_config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device, split=train_split)
    check_method(method, dict(options or {}))  # before the copy and the audits: a typo costs nothing
    if before is not None:
        check_before(before.to_dict(), config=scan_config, checkpoint_sha=None, named="before",
                     remedy="pass an audit taken with the same settings, or none")
    trained = model if inplace else copy.deepcopy(model)
    outcome = fix_model(trained, adapter, method=method, method_options=dict(options or {}), train_config=train_config,
                        scan_config=scan_config, before=before.to_dict() if before is not None else None, state_dir=state_dir,
                        progress=progress)
    return FixResult(model=trained, before=Audit.from_dict(outcome.before), after=Audit.from_dict(outcome.after),
                     comparison=Comparison.from_dict(outcome.comparison),
                     train_log={"training": outcome.training, "steps": outcome.steps})
