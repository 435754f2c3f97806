"""`ba.scan`: audit a model, in memory or a checkpoint file, and the checks every scan's settings pass first."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from biasaudit._core.arguments import at_least, check_keywords, checked, not_empty, output_dir
from biasaudit._core.progress import Progress
from biasaudit.data.adapter import Adapter, validate_adapter
from biasaudit.errors import InputError
from biasaudit.results import StrPath
from biasaudit.results.audit import Audit

if TYPE_CHECKING:
    from biasaudit.scanning.config import ScanConfig


@checked("ba.load_adapter", spec=not_empty)
def load_adapter(spec: str) -> Adapter:
    """The adapter `spec` names, as `biasaudit --adapter` loads it: "path/to/file.py:NAME" or "package.module:NAME",
    where NAME is an adapter instance or a class built without arguments. An AdapterError names a spec that cannot be
    found or loaded.

    Parameters: `spec` (the file or module and the name in it).
    """
    from biasaudit.data.adapter import load_adapter as load

    return load(spec)


def adapter_of(adapter: Adapter | str) -> tuple[Adapter, str | None]:
    """The adapter and the spec it was loaded from (None for an adapter object)."""
    return (load_adapter(adapter), adapter) if isinstance(adapter, str) else (adapter, None)


@checked(
    "ba.scan", split=not_empty, batch_size=at_least(1), seed=at_least(0), bootstrap=at_least(10), out=output_dir("ba.scan", "out")
)
def scan(
    model: nn.Module | StrPath,
    adapter: Adapter | str,
    *,
    split: str = "test",
    conditions: str | Sequence[str] = "default",
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    bootstrap: int = 1000,
    projection: str = "umap",
    progress: Progress | None = None,
    unimodal_models: Mapping[str, nn.Module | StrPath] | None = None,
    distributed: bool = False,
    out: StrPath | None = None,
    trust_checkpoint: bool = False,
    provenance: Mapping[str, Any] | None = None,
    **settings: Any,
) -> Audit:
    """Audit `model` through `adapter` on one split: every condition of the grid (full, missing, noisy, the ratio
    sweep, see docs/conditions.md), bias measures, calibration, embeddings and gradient conflict.

    `model` is a model, or the path of a checkpoint that the adapter's model loads (`torch.load(weights_only=True)`;
    a full pickle only with `trust_checkpoint=True`), recorded in the manifest with its SHA-256 as `biasaudit scan`
    records it; `adapter` is an Adapter, or its spec as `--adapter` takes it ("file.py:NAME", see `load_adapter`).
    `out` writes audit.json and audit.html into that directory as one set, checked and locked before the scan, as
    `biasaudit scan --out` does; `provenance` is recorded as the manifest's `settings` (where each setting came from).

    The model is evaluated in eval mode and its train/eval state is put back afterwards; the caller's global random
    generators are not touched. `progress(stage, done, total)` is called as the scan advances. Any other setting of
    `biasaudit.scanning.config.ScanConfig` (min_wrong, kmeans_k, mute, group_by, ...) may be given by name. Returns an `Audit`.

    `distributed=True` splits the scan over the processes of an initialised torch.distributed process group: EVERY
    process must then call scan with the same arguments; each evaluates its shard of the batches, rank 0 merges (and
    alone writes `out`), and every process returns the same Audit, equal to a single-process scan. It is off by default,
    because a scan called on one rank only (evaluation on rank 0 of a training job) would wait for the others forever: by
    default a process scans every sample alone, inside a process group or not. Outside a process group True scans alone
    too. `device` is used as given (pass each process its own GPU).

    `conditions` is a comma-separated str ("missing,noisy") or a list or tuple of the same names; `mute` a mapping of
    modality to muting impairment ({"image": "mean"}). Arguments are checked before any work: a wrong type raises
    ArgumentTypeError (a BiasAuditError and a TypeError), a wrong value InputError (a BiasAuditError and a
    ValueError), each naming the parameter; bad adapters or data raise a BiasAuditError subclass naming the input.

    Parameters: `model` and `adapter` (the model or checkpoint to audit and how to feed it); `split` (default "test");
    `conditions` (see above); `seed` (every random draw); `device`; `batch_size` (samples per forward); `bootstrap`
    (replicates of every interval); `projection` ("umap" or "pca", the embedding plots); `progress` (a callback);
    `unimodal_models` (modality -> a model, or its checkpoint, trained on that modality alone, for its ceiling);
    `distributed` (see above); `out`, `trust_checkpoint` and `provenance` (above); `settings` (any other ScanConfig
    field by name).
    """
    from biasaudit._core.output_set import OutputSet
    from biasaudit._core.sharding import process_group_shard
    from biasaudit.scanning.agreement import stopping_together
    from biasaudit.scanning.audit import AUDIT_FILES, audit_model, load_model, load_model_noting_prefix, stamped, write_audit

    group = process_group_shard() if distributed else None
    with ExitStack() as held:
        # In a process group every rank checks its own arguments; a mistake on one stops all of them with its sentence
        # rather than leaving the others to wait for it in the scan's first collective.
        with stopping_together(group is not None):
            loaded, spec, config = checked_scan(
                scan,
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
            outputs = (
                held.enter_context(OutputSet(out, files=AUDIT_FILES, option="ba.scan's 'out'"))
                if out is not None and (group is None or group.index == 0)
                else None
            )
        checkpoint, prefix = None, None
        if not isinstance(model, nn.Module):
            checkpoint = Path(model)
            model, prefix = load_model_noting_prefix(checkpoint, loaded, trust=trust_checkpoint)
        unimodal = {
            name: given
            if isinstance(given, nn.Module)
            else _sourced(load_model(Path(given), loaded, trust=trust_checkpoint), given)
            for name, given in (unimodal_models or {}).items()
        }
        document = audit_model(
            model,
            loaded,
            config=config,
            checkpoint=checkpoint,
            adapter_spec=spec,
            progress=progress,
            unimodal_models=unimodal,
            prefix_removed=prefix,
            distributed=distributed,
        )
        if provenance is not None:
            document["manifest"]["settings"] = dict(provenance)
        if outputs is not None:
            document = stamped(document, outputs)
            write_audit(document, outputs)
    return Audit.from_dict(document)


def checked_scan(
    call: Callable[..., Any], adapter: Adapter | str, settings: Mapping[str, Any], *, unimodal_models: Any, **fields: Any
) -> tuple[Adapter, str | None, ScanConfig]:
    """The adapter, its spec and the ScanConfig of a scan call (ba.scan, ba.scan_shard), every argument checked as the
    CLI checks it before any work: `settings` are the call's other ScanConfig fields by name, `fields` its own."""
    from biasaudit.scanning.config import config_from_settings

    where = f"ba.{call.__name__}"
    named = [name for name in inspect.signature(call).parameters if name != "settings"]
    check_keywords(settings, named + sorted(_settings()), where=where)
    loaded, spec = adapter_of(adapter)
    config = config_from_settings(where=where, **fields, **settings)
    _check_scan(loaded, config, where=where, unimodal_models=unimodal_models)
    return loaded, spec, config


def _sourced(model: nn.Module, path: StrPath) -> nn.Module:
    model.biasaudit_source = str(path)  # type: ignore[assignment]  # named in the ceilings section
    return model


def _settings() -> dict[str, str]:
    """ScanConfig's fields that ba.scan takes by name, by the name it takes them under."""
    import dataclasses

    from biasaudit.scanning.config import SETTING_NAMES, ScanConfig

    return {
        SETTING_NAMES.get(f.name, f.name): f.name
        for f in dataclasses.fields(ScanConfig)
        if f.name not in ("split", "conditions", "seed", "device", "batch_size", "bootstrap_replicates", "projection")
    }


def _check_scan(adapter: Any, config: Any, *, where: str, unimodal_models: Mapping[str, Any] | None = None) -> None:
    """What the CLI checks before any work, from Python: the adapter contract (two or more modalities, ...), the
    split, the device and precision, the conditions, the mutes and the unimodal models' modalities and files."""
    from biasaudit._core.input_paths import check_input_file
    from biasaudit.data.batches import check_split
    from biasaudit.scanning.config import check_conditions, check_precision, resolve_device, with_mute_overrides

    validate_adapter(adapter, source=f"given to {where} ({type(adapter).__name__})")
    check_split(adapter, config.split)
    check_precision(
        config.precision, resolve_device(config.device, label=f"The 'device' parameter of {where}", cpu="device='cpu'")
    )
    check_conditions(config.conditions, adapter)
    with_mute_overrides(adapter, config.mute, label=f"The 'mute' parameter of {where}")
    names = [m.name for m in adapter.modalities]
    unknown = [name for name in unimodal_models or {} if name not in names]
    if unknown:
        raise InputError(
            f"The 'unimodal_models' parameter of {where} names modality {unknown[0]!r}. Available: {', '.join(names)}."
        )
    for name, given in (unimodal_models or {}).items():
        if not isinstance(given, nn.Module):
            check_input_file(
                Path(given),
                named=f"The 'unimodal_models' parameter of {where}: {name}'s checkpoint {given}",
                expected="a file written by torch.save",
            )
