"""A whole audit of a checkpoint: load safely, scan, attach the manifest, write JSON and HTML."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit._core.files import file_sha256
from biasaudit.data.checkpoint import load_into_model, read_checkpoint
from biasaudit.errors import InputError
from biasaudit._core.output_set import OutputSet
from biasaudit.results import AUDIT_SCHEMA, AUDIT_SCHEMA_VERSION, Manifest, source_hash, write_json_atomic
from biasaudit._core.progress import Progress
from biasaudit.scanning.config import ScanConfig
from biasaudit.scanning.engine import scan_model

# Re-exported: training and the API stop their processes together through this module (layer rule, test_import_graph).
from biasaudit.scanning.agreement import stopping_together as stopping_together
from biasaudit.verdict import scan_verdict

log = logging.getLogger(__name__)


def load_model_noting_prefix(checkpoint: str | Path, adapter: Adapter, *, trust: bool = False) -> tuple[nn.Module, str | None]:
    """The adapter's model with the checkpoint loaded, and the key prefix removed to load it (None when none was)."""
    state = read_checkpoint(checkpoint, trust=trust)
    model = adapter.build_model()
    if not isinstance(model, nn.Module):
        raise InputError(f"The adapter's build_model() returned {type(model).__name__}; expected a torch.nn.Module.")
    return model, load_into_model(adapter, model, state, path=checkpoint)


def load_model(checkpoint: str | Path, adapter: Adapter, *, trust: bool = False) -> nn.Module:
    return load_model_noting_prefix(checkpoint, adapter, trust=trust)[0]


def _adapter_file(adapter: Adapter, spec: str | None) -> str | None:
    """The file that defines the adapter: the one the spec names (for a LoaderAdapter built there, the class lives
    in biasaudit, and hashing biasaudit's file would not show a change to the user's adapter), else the class's."""
    import importlib.util
    import inspect

    where = (spec or "").rpartition(":")[0]
    if where.endswith(".py") or "/" in where or "\\" in where:
        return where
    if where:
        try:
            found = importlib.util.find_spec(where)
        except (ImportError, ValueError):
            found = None
        if found is not None and found.origin and found.origin.endswith(".py"):
            return found.origin
    try:
        return inspect.getsourcefile(type(adapter))
    except TypeError:
        return None


def adapter_source(adapter: Adapter, spec: str | None) -> dict[str, Any]:
    return {
        "spec": spec or f"{type(adapter).__module__}:{type(adapter).__name__}",
        "sha256": source_hash(_adapter_file(adapter, spec)),
    }


def audit_model(
    model: nn.Module,
    adapter: Adapter,
    *,
    config: ScanConfig,
    checkpoint: str | Path | None,
    adapter_spec: str | None = None,
    progress: Progress | None = None,
    unimodal_models: dict[str, nn.Module] | None = None,
    prefix_removed: str | None = None,
    distributed: bool = False,
) -> dict[str, Any]:
    """prefix_removed: the key prefix stripped from the checkpoint's state dict to load it, named in the manifest.
    distributed: split the scan over the processes of the initialised process group (see scanning.scan_model)."""
    from biasaudit.scanning.agreement import check_agreement, keyword_settings, scan_fingerprint
    from biasaudit._core.sharding import process_group_shard

    start = time.perf_counter()
    group = process_group_shard() if distributed else None
    if group is not None:
        # Processes that call scan differently would merge into one audit of several scans. The weights are not
        # compared: hashing them would copy every parameter off the GPU on every call, e.g. every epoch of a training
        # job, and a sum on the device is not bit-exact (the command line compares its checkpoint files instead).
        check_agreement(
            scan_fingerprint(keyword_settings(config, unimodal_models), adapter=adapter_source(adapter, adapter_spec)),
            group="this process group",
            remedy="call scan with the same arguments",
        )
    sections = scan_model(
        model, adapter, config=config, progress=progress, unimodal_models=unimodal_models, distributed=distributed
    )
    checkpoint_facts = {
        "path": str(checkpoint) if checkpoint else None,
        "sha256": file_sha256(checkpoint) if checkpoint else None,
        "prefix_removed": prefix_removed,
    }
    return assemble_audit(
        sections,
        config=config,
        checkpoint=checkpoint_facts,
        adapter=adapter_source(adapter, adapter_spec),
        wall_time_s=time.perf_counter() - start,
        shards={"count": group.count, "by": "torch.distributed"} if group is not None else None,
    )


def assemble_audit(
    sections: dict[str, Any],
    *,
    config: ScanConfig,
    checkpoint: dict[str, Any],
    adapter: dict[str, Any],
    wall_time_s: float,
    shards: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The audit document: a scan's sections (biasaudit.scanning.finish) with its manifest and verdict. `shards` records how a
    sharded scan was split (torch.distributed processes, or parts merged by `biasaudit merge`)."""
    sections = dict(sections)
    forwards = sections.pop("_forwards_per_sample")
    manifest = Manifest(
        seed=config.seed,
        device=config.device,
        config=config.to_dict(),
        checkpoint=checkpoint,
        adapter=adapter,
        wall_time_s=wall_time_s,
    )
    audit = {"schema": AUDIT_SCHEMA, "schema_version": AUDIT_SCHEMA_VERSION, "manifest": manifest.to_dict(), **sections}
    audit["manifest"]["forwards_per_sample"] = forwards
    if shards is not None:
        audit["manifest"]["shards"] = shards
    audit["verdict"] = scan_verdict(audit)  # last: its sentences read every section above
    log.info(
        "audit of split %r: %d samples, %s forwards per sample, %.1f s%s",
        config.split,
        audit["dataset"]["n"],
        forwards.get("total"),
        wall_time_s,
        f" ({shards['count']} shards by {shards['by']})" if shards else "",
    )
    return audit


def load_models(
    checkpoint: str | Path, adapter: Adapter, *, trust: bool = False, unimodal: tuple[tuple[str, str | Path], ...] = ()
) -> tuple[nn.Module, str | None, dict[str, nn.Module]]:
    """The model with the checkpoint loaded, the key prefix removed to load it, and the unimodal models by modality."""
    model, prefix_removed = load_model_noting_prefix(checkpoint, adapter, trust=trust)
    unimodal_models = {}
    for name, path in unimodal:
        unimodal_models[name] = load_model(path, adapter, trust=trust)
        # Named in the ceilings section. torch's stubs type Module.__setattr__ for tensors and modules only; any other
        # value is stored as a plain attribute at runtime.
        unimodal_models[name].biasaudit_source = str(path)  # type: ignore[assignment]
    return model, prefix_removed, unimodal_models


def audit_checkpoint(
    checkpoint: str | Path,
    adapter: Adapter,
    *,
    config: ScanConfig,
    adapter_spec: str | None = None,
    trust: bool = False,
    progress: Progress | None = None,
    unimodal: tuple[tuple[str, str | Path], ...] = (),
    distributed: bool = False,
) -> dict[str, Any]:
    """unimodal: (modality, checkpoint of the same architecture trained on that modality alone) pairs, whose
    accuracy with the other modalities muted is that modality's ceiling."""
    model, prefix_removed, unimodal_models = load_models(checkpoint, adapter, trust=trust, unimodal=unimodal)
    return audit_model(
        model,
        adapter,
        config=config,
        checkpoint=checkpoint,
        adapter_spec=adapter_spec,
        progress=progress,
        unimodal_models=unimodal_models,
        prefix_removed=prefix_removed,
        distributed=distributed,
    )


def scan_checkpoint_shard(
    checkpoint: str | Path,
    adapter: Adapter,
    *,
    config: ScanConfig,
    shard: Any,
    part: Path,
    adapter_spec: str | None = None,
    trust: bool = False,
    progress: Progress | None = None,
    unimodal: tuple[tuple[str, str | Path], ...] = (),
    settings: Any = None,
) -> Path:
    """One shard of a scan of a checkpoint, written to the part file `part` (biasaudit/scanning/parts.py)."""
    from biasaudit.scanning.engine import scan_shard
    from biasaudit.scanning.parts import write_part

    start = time.perf_counter()
    model, prefix_removed, unimodal_models = load_models(checkpoint, adapter, trust=trust, unimodal=unimodal)
    context, state = scan_shard(model, adapter, config=config, shard=shard, progress=progress, unimodal_models=unimodal_models)
    write_part(
        part,
        shard=shard,
        config=config,
        adapter=adapter,
        context=context,
        state=state,
        settings=settings,
        checkpoint={"path": str(checkpoint), "sha256": file_sha256(checkpoint), "prefix_removed": prefix_removed},
        adapter_source=adapter_source(adapter, adapter_spec),
        wall_time_s=time.perf_counter() - start,
        unimodal_sha256={name: file_sha256(path) for name, path in unimodal},
    )
    log.info("shard %s of split %r written to %s, %.1f s", shard, config.split, part, time.perf_counter() - start)
    return part


AUDIT_FILES = ("audit.json", "audit.html")


def stamped(result: dict[str, Any], outputs: OutputSet) -> dict[str, Any]:
    """A copy of an audit carrying the stamp of the run that writes it (manifest.run)."""
    return {**result, "manifest": {**result["manifest"], "run": outputs.stamp()}}


def stage_audit(
    audit: dict[str, Any], outputs: OutputSet, *, json_name: str = "audit.json", html_name: str | None = "audit.html"
) -> None:
    """Write an audit's JSON (and HTML) into a set's staging directory, stamped with its run."""
    from biasaudit.report.render import write_audit_html

    audit = stamped(audit, outputs)
    write_json_atomic(audit, outputs.staged(json_name))
    if html_name is not None:
        write_audit_html(audit, outputs.staged(html_name))


def write_audit(audit: dict[str, Any], out: str | Path | OutputSet) -> tuple[Path, Path]:
    """Write audit.json and audit.html into `out` as one set (see biasaudit._core.output_set); `out` may be a set the caller
    opened before the scan, so that its directory was checked and locked before the work."""
    if not isinstance(out, OutputSet):
        with OutputSet(out, files=AUDIT_FILES) as outputs:
            return write_audit(audit, outputs)
    stage_audit(audit, out)
    paths = out.commit(("audit.html", "audit.json"))  # the JSON, which tools read, last
    return paths["audit.json"], paths["audit.html"]
