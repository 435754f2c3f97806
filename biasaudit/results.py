"""Audit results as JSON (schema-versioned) and the run manifest every result carries."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from biasaudit.checkpoint import atomic_write_bytes, file_sha256
from biasaudit.errors import DataError, InputError
from biasaudit.fingerprint import check_fingerprint
from biasaudit.metrics.accuracy import BootstrapCounts

AUDIT_SCHEMA = "biasaudit.audit"
AUDIT_SCHEMA_VERSION = 1
_VERSIONED_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "umap-learn", "matplotlib", "jinja2")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def source_hash(path: str | os.PathLike | None) -> str | None:
    return file_sha256(path) if path and Path(path).is_file() else None


@dataclass(frozen=True)
class Manifest:
    seed: int
    device: str
    config: Mapping[str, Any]
    checkpoint: Mapping[str, Any]
    adapter: Mapping[str, Any]
    wall_time_s: float
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        from biasaudit import __version__

        return {"tool": "biasaudit", "version": __version__, "created": self.created,
                "wall_time_s": round(self.wall_time_s, 3), "seed": self.seed, "device": self.device,
                "versions": library_versions(), "config": dict(self.config),
                "checkpoint": dict(self.checkpoint), "adapter": dict(self.adapter)}


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become null so the file is strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    return obj


def public(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Without the in-memory-only keys (those starting with an underscore)."""
    return {k: v for k, v in obj.items() if not str(k).startswith("_")}


# An indented JSON array whose every element is an integer. JSON strings cannot hold a raw newline, so
# this never matches inside a string value.
_INTEGER_ARRAY = re.compile(r"\[\n\s*-?\d+(?:,\n\s*-?\d+)*\n\s*\]")


def _one_line(match: re.Match) -> str:
    return "[" + ",".join(item.strip() for item in match.group(0)[1:-1].split(",")) + "]"


def to_json_text(obj: Any) -> str:
    """Indented strict JSON, with integer arrays (bootstrap counts, labels, histograms) on one line each:
    one integer per line would make the bootstrap section alone several times the rest of an audit."""
    if isinstance(obj, Mapping):
        obj = public(obj)
    return _INTEGER_ARRAY.sub(_one_line, json.dumps(to_jsonable(obj), indent=2, allow_nan=False)) + "\n"


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_bytes(to_json_text(obj).encode("utf-8"), path)


def read_audit(path: str | os.PathLike) -> dict[str, Any]:
    """Read an audit.json and check that it is one this version understands."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Audit file {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"Audit file {path} is not valid JSON ({exc}).") from exc
    if not isinstance(data, dict) or data.get("schema") != AUDIT_SCHEMA:
        raise InputError(f"Audit file {path} is not a biasaudit audit (expected \"schema\": \"{AUDIT_SCHEMA}\").")
    if data.get("schema_version") != AUDIT_SCHEMA_VERSION:
        raise InputError(f"Audit file {path} has schema_version {data.get('schema_version')!r}; this biasaudit reads version {AUDIT_SCHEMA_VERSION}.")
    check_against_schema(data, "audit", source=f"Audit file {path}")
    _check_pairing_sections(data, source=str(path))
    return data


def _refuse_constant(name: str) -> float:
    """json reads NaN and Infinity, which no audit writes (they are written as null): a file holding one is damaged."""
    raise ValueError(f"{name} is not a JSON number")


def check_against_schema(data: Any, name: str, *, source: str) -> None:
    """Validate against the published schema biasaudit/schemas/NAME.schema.json; InputError naming the first field."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema(name))
    error = next(iter(sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".") or "(the top level)"
        value = error.instance
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        raise InputError(f"{source} is damaged at {where}: {shown[:60]} does not fit the published schema ({error.validator} "
                         f"{error.validator_value!r:.60}); re-run the scan that wrote it.")


def _schema(name: str) -> dict[str, Any]:
    from importlib import resources

    return json.loads(resources.files("biasaudit").joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8"))


def _check_pairing_sections(audit: Mapping[str, Any], *, source: str) -> None:
    """The optional `samples` and `bootstrap` sections, when present, are what a scan writes (older audits lack
    both and still load: they are compared without paired intervals)."""
    rows = audit.get("conditions")
    names = [row["name"] for row in rows if isinstance(row, Mapping) and isinstance(row.get("name"), str)] if isinstance(rows, list) else []
    checks = {"samples": check_fingerprint, "bootstrap": lambda section: BootstrapCounts.from_dict(section, conditions=names)}
    for key, check in checks.items():
        if key not in audit:
            continue
        try:
            check(audit[key])
        except DataError as exc:
            raise DataError(f"Audit file {source} has an invalid {key} section: {exc}") from exc
