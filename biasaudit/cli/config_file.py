"""Settings from a file, so a pipeline runs `biasaudit scan ...` and `biasaudit gate ...` without long
option lists.

Where: `--config FILE`, else `biasaudit.toml` in the working directory (tables `[scan]` and `[gate]`),
else `pyproject.toml` there (tables `[tool.biasaudit.scan]` and `[tool.biasaudit.gate]`). Keys are the
long option names with `_` for `-` (`batch_size`, `max_gap_increase`; `min_accuracy` and `min_worst_group` are
tables of condition = percent; the other per-key limits take a number or a table). Both tables also take the
experiment tracker's settings (`log`, `experiment`, `run_name`, `tracking_uri`; docs/trackers.md). An option given on
the command line wins over the file, the file over the default; `resolve` records which one each setting came
from, for the manifest.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from biasaudit.api._names import GATE_RULES
from biasaudit.errors import InputError

# --log and its options (biasaudit.cli.tracker_options), which a pipeline sets once for its scan and its gate.
TRACKER_KEYS: dict[str, type | tuple[type, ...]] = {"log": str, "experiment": str, "run_name": str, "tracking_uri": str}
SCAN_KEYS: dict[str, type | tuple[type, ...]] = {
    "adapter": str,
    "split": str,
    "conditions": str,
    "seed": int,
    "device": str,
    "batch_size": int,
    "projection": str,
    "bootstrap": int,
    "gradient_batches": int,
    "min_wrong": int,
    "kmeans_k": int,
    "embedding_points": int,
    "mute": list,
    "min_group": int,
    "group_by": str,
    "mute_compare": bool,
    "unimodal": list,
    "ceiling_per_class": int,
    "precision": str,
    "favoured_fraction": (int, float),
    "draws": int,
    **TRACKER_KEYS,
}
# A number applies to the option's default target; a table gives one limit per group, condition or
# modality. The values inside are checked by biasaudit.gating.registry, the same path as the command line's.
GATE_KEYS: dict[str, type | tuple[type, ...]] = {
    "baseline": str,
    **{name: rule.config_types for name, rule in GATE_RULES.items()},
    "jsd": str,
    "significant": bool,
    **TRACKER_KEYS,
}  # a rule's key and what it may hold come from its registry entry (biasaudit.gating.registry)
SECTIONS = {"scan": SCAN_KEYS, "gate": GATE_KEYS}
_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a table"}
COMMAND_LINE, DEFAULT = "command line", "default"


@dataclass(frozen=True)
class Settings:
    path: Path | None = None
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> Mapping[str, Any]:
        return self.sections.get(name, {})

    def label(self, name: str) -> str:
        table = f"[{name}]" if self.path is not None and self.path.name != "pyproject.toml" else f"[tool.biasaudit.{name}]"
        return f"{self.path} {table}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Config file {path} cannot be read ({exc}).") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"Config file {path} is not valid TOML ({exc}).") from exc


def _checked(tables: Mapping[str, Any], path: Path, prefix: str) -> dict[str, dict[str, Any]]:
    unknown = [name for name in tables if name not in SECTIONS]
    if unknown:
        raise InputError(
            f"Config file {path} has an unknown table [{prefix}{unknown[0]}]. Available: "
            f"{', '.join(prefix + s for s in SECTIONS)}."
        )
    out: dict[str, dict[str, Any]] = {}
    for name, values in tables.items():
        if not isinstance(values, dict):
            raise InputError(f"Config file {path}: {prefix}{name} must be a table of settings.")
        keys = SECTIONS[name]
        for key, value in values.items():
            if key not in keys:
                raise InputError(f"Config file {path}: [{prefix}{name}] has no setting {key!r}. Available: {', '.join(keys)}.")
            expected = keys[key]
            wanted = expected if isinstance(expected, tuple) else (expected,)
            # TOML's true is a Python bool, which is also an int: accept it only where a bool is wanted.
            if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
                raise InputError(
                    f"Config file {path}: [{prefix}{name}] {key} = {value!r} is not "
                    f"{' or '.join(_TYPE_WORDS[t] for t in wanted)}."
                )
        out[name] = dict(values)
    return out


def _check_file(path: Path) -> None:
    expected = "a biasaudit.toml or pyproject.toml file"
    if path.is_dir():
        raise InputError(f"Config file {path} is a directory; expected {expected}.")
    if not path.exists():
        raise InputError(f"Config file {path} does not exist.")
    if not path.is_file():
        raise InputError(f"Config file {path} is not a regular file; expected {expected}.")


def load_settings(explicit: Path | None = None, *, directory: Path | None = None) -> Settings:
    """The settings file in force (none: empty Settings)."""
    directory = directory or Path.cwd()
    if explicit is not None:
        _check_file(explicit)
        candidates = [explicit]
    else:
        candidates = [p for p in (directory / "biasaudit.toml", directory / "pyproject.toml") if p.is_file()]
    for path in candidates:
        data = _read_toml(path)
        if path.name == "pyproject.toml":
            tables = data.get("tool", {}).get("biasaudit")
            if tables is None:
                if explicit is not None:
                    raise InputError(f"Config file {path} has no [tool.biasaudit] table.")
                continue
            return Settings(path=path, sections=_checked(tables, path, "tool.biasaudit."))
        return Settings(path=path, sections=_checked(data, path, ""))
    return Settings()


def resolve(
    given: Mapping[str, Any], explicit: set[str], settings: Settings, section: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each setting's value and where it came from: the command line (names in `explicit`), the file, or
    the option's default (`given` holds the parsed options, defaults included)."""
    from biasaudit.api._names import GATE_OPTIONS as OPTIONS
    from biasaudit.api._names import gate_limits as parse_limits

    from_file = settings.section(section)
    values, sources = {}, {}
    for name, value in given.items():
        in_file = from_file.get(name)
        mergeable = isinstance(in_file, dict) or (
            name in OPTIONS
            and OPTIONS[name].plain is not None
            and isinstance(in_file, (int, float))
            and not isinstance(in_file, bool)
        )
        if (
            name in explicit and isinstance(value, list) and mergeable and all("=" in item for item in value)
        ):  # a malformed item is left for the option's own error
            # Limits per condition, group or modality: the command line overrides and adds keys, the file's others stay.
            # A plain number in the file is its option's default target, e.g. the carrier, and stays too. The file's
            # part is checked first under the file's name, so its mistakes are not blamed on the command line.
            parse_limits(name, in_file, label=f"{settings.label(section)} {name}")
            table = in_file if isinstance(in_file, dict) else {OPTIONS[name].plain: in_file}
            typed = dict(item.rpartition("=")[::2] for item in value)
            values[name] = [f"{k}={v}" for k, v in {**table, **typed}.items()]
            sources[name] = f"command line over {settings.label(section)}"
        elif name in explicit:
            values[name], sources[name] = value, COMMAND_LINE
        elif name in from_file:
            values[name], sources[name] = from_file[name], settings.label(section)
        else:
            values[name], sources[name] = value, DEFAULT
    return values, sources
