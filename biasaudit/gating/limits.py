"""Parsing the gate's limits, one path for the command line (`--max-gap-increase missing=2`, repeatable) and the
config file (`max_gap_increase = 2` or `max_gap_increase = {missing = 2}`), so a bad value gets the same one-sentence
error from both, naming the option and what was expected, before any audit is read.

A table limit (LimitOption) is a mapping key -> number. The key is an impairment group, a condition or a modality
(each rule's registry entry says which). A plain number means the option's default target: ALL (every group the audit
has; the baseline's carrier) or `full`. Modality and condition names depend on the audits, so the gate checks those once
it has read them. A single-number limit (DropLimit, e.g. max_jsd_drop) takes no key. Which rule takes which limit is
in biasaudit.gating.registry; `parse_limits(name, raw)` there parses a rule's limits by its name.

Nothing here imports torch: `biasaudit gate --help` reads the rules' registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Mapping

from biasaudit.errors import InputError

ALL = "*"
JSD_STATISTICS = {"weighted": "weighted_mean", "mean": "mean"}


def gap_groups() -> tuple[str, ...]:
    """The impairment groups with a Gap (missing, noisy), as biasaudit.comparing names them; read when a limit is parsed,
    so that the command line's help does not import comparing (and torch)."""
    from biasaudit.comparing import GROUPS

    return GROUPS


@dataclass(frozen=True)
class LimitOption:
    form: str  # what one item looks like, for the error
    example: str
    plain: str | None  # the key a plain number stands for; None: a key is required
    # The only keys allowed, or a function that returns them; None: any name, checked against the audits later.
    keys: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    low: float = -math.inf
    high: float = math.inf
    range_words: str = "a finite number"

    def allowed(self) -> tuple[str, ...] | None:
        return self.keys() if callable(self.keys) else self.keys

    def parse(self, raw: Any, label: str) -> dict[str, float] | None:
        """The limits from a number, a 'KEY=X' or 'X' string, a list of those, or a table; None when nothing is set."""
        if raw is None or (isinstance(raw, (list, tuple, Mapping)) and not raw):
            return None
        if isinstance(raw, Mapping):
            for k, v in raw.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise InputError(f"{label} {k} = {v!r} is {type(v).__name__}; expected a number (e.g. {self.example}).")
            pairs: list[tuple[str | None, Any, Any]] = [(str(k), v, f"{k}={v}") for k, v in raw.items()]
        else:
            pairs = []
            for item in raw if isinstance(raw, (list, tuple)) else [raw]:
                key, sep, value = str(item).rpartition("=") if isinstance(item, str) else ("", "", item)
                pairs.append((key if sep else None, value, item))
        return dict(self._one(key, value, item, label) for key, value, item in pairs)

    def _one(self, key: str | None, value: Any, item: Any, label: str) -> tuple[str, float]:
        number = _number(value)
        named = self.plain if key is None else key
        if named is None or key == "" or number is None or math.isnan(number):
            raise InputError(f"{label} {item!r} is not {self.form} (e.g. {self.example}).")
        key = named
        allowed = self.allowed()
        if allowed is not None and key not in allowed and key != ALL:
            raise InputError(
                f"{label} {item!r} names no impairment group {key!r}; expected {self.form}. Available: {', '.join(allowed)}."
            )
        if not self.low <= number <= self.high or math.isinf(number):
            raise InputError(f"{label} {item!r}: {number:g} is not {self.range_words}.")
        return key, number


@dataclass(frozen=True)
class DropLimit:
    """One number >= 0 with no key (max_jsd_drop): how far a measure may fall."""

    form: str = "NUMBER"
    example: str = "0.05"
    plain: None = None

    def parse(self, value: Any, label: str) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value):
            raise InputError(f"{label} is {value!r}; expected a number.")
        if value is not None and (value < 0 or value == float("inf")):
            raise InputError(
                f"{label} is {value!r}; expected a finite drop >= 0 (a negative limit fails identical audits, "
                "an infinite one never fails)."
            )
        return value


PERCENT: dict[str, Any] = dict(low=0.0, high=100.0, range_words="a percentage between 0 and 100")
# A ratchet's limit is how far a measure may move the wrong way: a negative one would fail identical audits.
POINTS: dict[str, Any] = dict(low=0.0, range_words="a number of points >= 0")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def parse_statistic(value: Any, *, label: str = "--jsd") -> str:
    """Which JSD statistic the max_jsd_drop rule reads."""
    if value not in JSD_STATISTICS:
        raise InputError(f"{label} {value!r} is not a JSD statistic. Available: {', '.join(JSD_STATISTICS)}.")
    return value
