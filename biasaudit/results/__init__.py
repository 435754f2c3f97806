"""Audit results as JSON (schema-versioned) and the run manifest every result carries."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from biasaudit._core.files import atomic_write_bytes, file_sha256
from biasaudit._core.input_paths import check_input_file
from biasaudit.errors import DataError, InputError
from biasaudit.data.fingerprint import check_fingerprint
from biasaudit._core.output_set import check_set
from biasaudit.diagnostics.accuracy import BootstrapCounts
from biasaudit._core.randomness import GENERATOR

AUDIT_SCHEMA = "biasaudit.audit"
AUDIT_SCHEMA_VERSION = 1
_VERSIONED_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "umap-learn", "matplotlib", "jinja2")

if TYPE_CHECKING:
    StrPath: TypeAlias = str | os.PathLike[str]
else:
    # A path argument. At run time the bare class: `biasaudit._core.arguments.checked` reads the annotations of the public
    # calls and checks os.PathLike by isinstance; a subscripted os.PathLike[str] is a generic alias it does not read.
    StrPath = str | os.PathLike


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def source_hash(path: StrPath | None) -> str | None:
    return file_sha256(path) if path and Path(path).is_file() else None


@dataclass(frozen=True)
class Manifest:
    seed: int
    device: str
    config: Mapping[str, Any]
    checkpoint: Mapping[str, Any]
    adapter: Mapping[str, Any]
    wall_time_s: float
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        from biasaudit import __version__

        return {
            "tool": "biasaudit",
            "version": __version__,
            "created": self.created,
            "wall_time_s": round(self.wall_time_s, 3),
            "seed": self.seed,
            "device": self.device,
            "versions": library_versions(),
            "config": dict(self.config),
            "checkpoint": dict(self.checkpoint),
            "adapter": dict(self.adapter),
            "randomness": dict(GENERATOR),
        }


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


def _one_line(match: re.Match[str]) -> str:
    return "[" + ",".join(item.strip() for item in match.group(0)[1:-1].split(",")) + "]"


def to_json_text(obj: Any) -> str:
    """Indented strict JSON, with integer arrays (bootstrap counts, labels, histograms) on one line each:
    one integer per line would make the bootstrap section alone several times the rest of an audit."""
    if isinstance(obj, Mapping):
        obj = public(obj)
    return _INTEGER_ARRAY.sub(_one_line, json.dumps(to_jsonable(obj), indent=2, allow_nan=False)) + "\n"


def write_json_atomic(obj: Any, path: StrPath) -> None:
    atomic_write_bytes(to_json_text(obj).encode("utf-8"), path)


def read_audit(path: StrPath) -> dict[str, Any]:
    """Read an audit.json and check that it is one this version understands."""
    path = Path(path)
    data = _read_json(
        path, source=f"Audit file {path}", expected="an audit.json a scan wrote", remedy="re-run the scan that wrote it"
    )
    if not isinstance(data, dict) or data.get("schema") != AUDIT_SCHEMA:
        raise InputError(f'Audit file {path} is not a biasaudit audit (expected "schema": "{AUDIT_SCHEMA}").')
    if data.get("schema_version") != AUDIT_SCHEMA_VERSION:
        raise InputError(
            f"Audit file {path} has schema_version {data.get('schema_version')!r}; "
            f"this biasaudit reads version {AUDIT_SCHEMA_VERSION}."
        )
    check_against_schema(data, "audit", source=f"Audit file {path}")
    _check_pairing_sections(data, source=str(path))
    check_set(path, data, source=f"Audit file {path}")
    return data


def read_train_log(path: StrPath) -> dict[str, Any]:
    """Read the train_log.json of a fix run (for `compare --train-log`) and check it against its published schema."""
    path = Path(path)
    source = f"Training log {path}"
    data: dict[str, Any] = _read_json(
        path, source=source, expected="the train_log.json file a fix run wrote", remedy="re-run the fix that wrote it"
    )
    check_against_schema(data, "train_log", source=source, remedy="re-run the fix that wrote it")
    check_set(path, data, source=source)
    return data


def _read_json(path: Path, *, source: str, expected: str, remedy: str) -> Any:
    """A JSON result file, read strictly: a directory, a missing or unreadable file, invalid JSON, NaN or Infinity
    are each one sentence naming the file."""
    check_input_file(path, named=source, expected=expected)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_Constant)
    except OSError as exc:
        raise InputError(f"{source} cannot be read ({exc.strerror or exc}).") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{source} is not valid JSON ({exc}).") from exc
    check_no_constant(data, source=source, remedy=remedy)
    return data


class _Constant(float):
    """NaN or an infinity as json read it, kept so that the field holding it can be named."""

    name: str

    def __new__(cls, name: str) -> _Constant:
        value = super().__new__(cls, {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}[name])
        value.name = name
        return value


def check_no_constant(data: Any, *, source: str, remedy: str) -> None:
    """NaN and Infinity are not JSON and biasaudit never writes them (a figure it could not compute is null): a file
    holding one is damaged, and the error names the field. Read the file with json.loads(..., parse_constant=_Constant)."""
    constant = _first_constant(data)
    if constant is not None:
        where, name = constant
        raise InputError(
            f"{source} is damaged at {where}: {name} is not a JSON number (biasaudit writes null for a figure it "
            f"could not compute); {remedy}."
        )


def _first_constant(data: Any, path: tuple[str | int, ...] = ()) -> tuple[str, str] | None:
    """(field, "NaN" | "Infinity" | "-Infinity") of the first such constant in a document json read, else None."""
    if isinstance(data, _Constant):
        return _field(path), data.name
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        found = _first_constant(value, (*path, key))
        if found is not None:
            return found
    return None


def _field(path: Any) -> str:
    """A JSON path as the error messages write it: conditions[1].accuracy."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(the top level)"


def check_against_schema(data: Any, name: str, *, source: str, remedy: str = "re-run the scan that wrote it") -> None:
    """Validate against the published schema biasaudit/schemas/NAME.schema.json; InputError naming the first field."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema(name))
    error = next(iter(sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = _field(error.absolute_path)
        value = error.instance
        if error.validator == "required" and isinstance(value, dict):  # name the missing field itself, not its parent
            missing = next((key for key in error.validator_value if key not in value), None)
            field = missing if where == "(the top level)" else f"{where}.{missing}"
            raise InputError(
                f"{source} is damaged at {field}: the field is missing, and the published schema requires it; {remedy}."
            )
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        raise InputError(
            f"{source} is damaged at {where}: {shown[:60]} does not fit the published schema ({error.validator} "
            f"{error.validator_value!r:.60}); {remedy}."
        )


def _schema(name: str) -> dict[str, Any]:
    from importlib import resources

    text = resources.files("biasaudit").joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _check_pairing_sections(audit: Mapping[str, Any], *, source: str) -> None:
    """The optional `samples` and `bootstrap` sections, when present, are what a scan writes (older audits lack
    both and still load: they are compared without paired intervals)."""
    rows = audit.get("conditions")
    names = (
        [row["name"] for row in rows if isinstance(row, Mapping) and isinstance(row.get("name"), str)]
        if isinstance(rows, list)
        else []
    )
    checks: dict[str, Callable[[Any], object]] = {
        "samples": check_fingerprint,
        "bootstrap": lambda section: BootstrapCounts.from_dict(section, conditions=names),
    }
    for key, check in checks.items():
        if key not in audit:
            continue
        try:
            check(audit[key])
        except DataError as exc:
            raise DataError(f"Audit file {source} has an invalid {key} section: {exc}") from exc
