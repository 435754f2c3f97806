"""Scan parts for job arrays without a process group (Slurm arrays, Ray, a CI matrix): `biasaudit scan --shard I/N`
writes one shard's state to a part file, and `biasaudit merge PART...` checks that the parts are the whole of one
scan, merges them exactly (biasaudit/scanning/state.py) and writes the audit one process would have written.

A part file is a torch file of plain values (numbers, strings, lists, dicts, tensors), read back with
`weights_only=True`: merging parts runs no code from them. Objects are rebuilt only from the classes named in
biasaudit/scanning/part_values.py's SCAN_CLASSES and those of the registered diagnostics
(biasaudit/diagnostics/registry.py part_classes). What the merge needs of the adapter (its modalities, classes and
names) is recorded in the part, so a merge needs neither the adapter's code nor the model.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

import torch

from biasaudit.data.adapter import Adapter
from biasaudit.errors import InputError
from biasaudit.diagnostics.registry import diagnostic_class
from biasaudit._core.randomness import GENERATOR
from biasaudit.scanning.part_values import from_plain, to_plain
from biasaudit.scanning.state import ScanContext, ScanState, merged
from biasaudit._core.sealed import sealed_bytes, unsealed
from biasaudit._core.sharding import Shard

FORMAT = "biasaudit-scan-part"
# Version 2: the accumulators' layouts of generator v3 (group sums gathered per 4,096 samples, calibration per [K, bins]).
# Version 3: draws of random conditions (Condition.draw, per-condition draw counts) and the interaction share's replicates.
# Version 4: the content is sealed with its SHA-256 (`seal`), checked before anything in it is read.
# Version 5: the registered diagnostics' states by name (PassState.diagnostics), their names listed beside the content.
FORMAT_VERSION = 5


def part_name(shard: Shard) -> str:
    return f"scan-part-{shard.index}-of-{shard.count}.pt"


# ---- what a part records ----------------------------------------------------------------------------------------
def adapter_facts(adapter: Adapter) -> dict[str, Any]:
    """What finishing an audit reads of the adapter."""
    return {
        "modalities": list(adapter.modalities),
        "num_classes": int(adapter.num_classes),
        "label_key": adapter.label_key,
        "bias_key": adapter.bias_key,
        "splits": tuple(adapter.splits),
        "class_names": tuple(adapter.class_names) if adapter.class_names else None,
        "bias_names": tuple(adapter.bias_names) if adapter.bias_names else None,
    }


class RecordedAdapter(Adapter):
    """An adapter rebuilt from a part's facts: it describes the data, and has neither data nor a model."""

    def __init__(self, facts: Mapping[str, Any]) -> None:
        for name, value in facts.items():
            setattr(self, name, value)

    def data(self, split: str, *, batch_size: int):  # pragma: no cover - a merge reads no data (finish_scan needs none)
        raise InputError("A merge of scan parts has no data to read.")


@dataclass(frozen=True)
class ScanPart:
    path: Path
    shard: Shard
    identity: dict[str, Any]  # what must be equal in every part of one scan
    facts: dict[str, Any]
    context: ScanContext
    state: ScanState
    extra: dict[str, Any]  # manifest details (checkpoint path, key prefix, settings), wall time


def write_part(
    path: Path,
    *,
    shard: Shard,
    config: Any,
    checkpoint: Mapping[str, Any],
    adapter_source: Mapping[str, Any],
    adapter: Adapter,
    context: ScanContext,
    state: ScanState,
    wall_time_s: float,
    settings: Any = None,
    unimodal_sha256: Mapping[str, str | None] | None = None,
) -> None:
    from biasaudit import __version__
    from biasaudit._core.files import atomic_write_bytes
    from biasaudit.results import library_versions

    # Parts of one scan agree on all of this; the device only by type (cuda:0 and cuda:1 compute alike, a CPU may not).
    settings_compared = {**dataclasses.asdict(config), "device": str(config.device).split(":")[0]}
    identity = {
        "config": settings_compared,
        "checkpoint_sha256": checkpoint.get("sha256"),
        "adapter_sha256": adapter_source.get("sha256"),
        "unimodal_sha256": dict(unimodal_sha256 or {}),
        "generator": dict(GENERATOR),
        "biasaudit": __version__,
        "versions": library_versions(),
        "shard_count": shard.count,
        "split_samples": state.split_samples,
        "split_batches": state.split_batches,
    }
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "shard": [shard.index, shard.count],
        "diagnostics": list(state.main.diagnostics),
        "identity": to_plain(identity),
        "facts": to_plain(adapter_facts(adapter)),
        "context": to_plain(context),
        "state": to_plain(state),
        "extra": to_plain(
            {
                "config": dataclasses.asdict(config),
                "checkpoint": dict(checkpoint),
                "adapter": dict(adapter_source),
                "wall_time_s": float(wall_time_s),
                "settings": settings,
            }
        ),
    }
    atomic_write_bytes(seal(payload), path)


def seal(payload: Mapping[str, Any]) -> bytes:
    """The part file's bytes: the payload sealed with its SHA-256 (biasaudit/_core/sealed.py), its format and version
    beside it."""
    return sealed_bytes(payload, header={"format": payload.get("format"), "version": payload.get("version")})


def read_part(path: str | Path) -> ScanPart:
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"Part {path} {'is a directory' if path.is_dir() else 'does not exist'}; expected a file written by "
            "biasaudit scan --shard I/N."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the same mistake for the user
        raise InputError(
            f"Part {path} is not a scan part (it could not be read as one: {type(exc).__name__}); expected a file written by "
            "biasaudit scan --shard I/N."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"Part {path} is not a scan part; expected a file written by biasaudit scan --shard I/N.")
    if payload.get("version") != FORMAT_VERSION:
        raise InputError(
            f"Part {path} is of part format {payload.get('version')!r}; this biasaudit reads format {FORMAT_VERSION}. "
            "Write the parts and merge them with one version."
        )
    payload = _unsealed(path, payload)
    for name in payload.get("diagnostics", []):
        try:
            diagnostic_class(name)
        except InputError as exc:
            raise InputError(
                f"Part {path} cannot be merged here: {exc} Merge with the biasaudit, and the diagnostics registered, that "
                "wrote it."
            ) from None
    try:
        index, count = payload["shard"]
        part = ScanPart(
            path=path,
            shard=Shard(int(index), int(count)),
            identity=from_plain(payload["identity"]),
            facts=from_plain(payload["facts"]),
            context=from_plain(payload["context"]),
            state=from_plain(payload["state"]),
            extra=from_plain(payload["extra"]),
        )
    except (KeyError, ValueError, TypeError, IndexError, RecursionError, InputError) as exc:
        raise InputError(
            f"Part {path} is damaged ({type(exc).__name__}: {exc}); write it again with biasaudit scan --shard I/N."
        ) from None
    generator = part.identity.get("generator") if isinstance(part.identity, Mapping) else None
    if generator != GENERATOR:
        raise InputError(
            f"Part {path} was drawn by random generator {generator!r}; this biasaudit draws with {GENERATOR!r}. "
            "Write the parts and merge them with one version."
        )
    return part


def _unsealed(path: Path, sealed: Mapping[str, Any]) -> Mapping[str, Any]:
    """The payload inside a sealed part, once its bytes match the SHA-256 written beside them."""
    payload = unsealed(sealed)
    if payload is None:
        raise InputError(
            f"Part {path} was altered or damaged after it was written (its content does not match the SHA-256 recorded "
            "in it); nothing was merged. Write it again with biasaudit scan --shard I/N."
        )
    if payload.get("format") != FORMAT or payload.get("version") != FORMAT_VERSION:
        raise InputError(f"Part {path} is not a scan part; expected a file written by biasaudit scan --shard I/N.")
    return payload


def _identity_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    words = {
        "checkpoint_sha256": "checkpoints (SHA-256)",
        "adapter_sha256": "adapter files (SHA-256)",
        "unimodal_sha256": "unimodal checkpoints (SHA-256)",
        "generator": "random generators",
        "biasaudit": "biasaudit versions",
        "versions": "library versions",
        "shard_count": "shard counts",
        "split_samples": "split sizes (samples)",
        "split_batches": "numbers of batches",
    }
    for key, what in words.items():
        if a.get(key) != b.get(key):
            return f"their {what} differ ({a.get(key)!r} vs {b.get(key)!r})"
    for key in sorted(set(a["config"]) | set(b["config"])):
        if a["config"].get(key) != b["config"].get(key):
            return f"their setting {key} differs ({a['config'].get(key)!r} vs {b['config'].get(key)!r})"
    return None


def merge_parts(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The audit of a scan from all of its parts (`biasaudit scan --shard I/N`), equal to the audit one process writes
    (its manifest aside: wall time, and `manifest.shards`). Refuses parts of different scans, a part given twice, a
    missing shard, and files that are not parts, naming them, before any merging."""
    from biasaudit.scanning.audit import assemble_audit
    from biasaudit._core.progress import silent
    from biasaudit.scanning.config import ScanConfig
    from biasaudit.scanning.finish import finish_scan

    if not paths:
        raise InputError("merge needs the part files of a scan (biasaudit scan --shard I/N writes them); none were given.")
    parts = [read_part(p) for p in paths]
    first = parts[0]
    seen: dict[int, Path] = {}
    for part in parts:
        difference = _identity_difference(first.identity, part.identity) or first.context.difference(part.context)
        if difference:
            raise InputError(f"Parts {first.path} and {part.path} are of different scans: {difference}.")
        if part.shard.index in seen:
            raise InputError(
                f"Parts {seen[part.shard.index]} and {part.path} are both shard {part.shard}; expected each shard once."
            )
        seen[part.shard.index] = part.path
    ordered = sorted(parts, key=lambda p: p.shard.index)
    start = time.perf_counter()
    state = merged([p.state for p in ordered])
    try:
        config = ScanConfig(**first.extra["config"])
    except TypeError as exc:
        raise InputError(
            f"Part {first.path} records settings this biasaudit does not know ({exc}); merge with the version that wrote it."
        ) from None
    sections = finish_scan(
        state, first.context, adapter=RecordedAdapter(first.facts), config=config, model=None, device=None, progress=silent
    )
    audit = assemble_audit(
        sections,
        config=config,
        checkpoint=first.extra["checkpoint"],
        adapter=first.extra["adapter"],
        wall_time_s=max(p.extra["wall_time_s"] for p in parts) + time.perf_counter() - start,
        shards={"count": first.shard.count, "by": "parts"},
    )
    if first.extra.get("settings") is not None:
        audit["manifest"]["settings"] = first.extra["settings"]
    return audit
