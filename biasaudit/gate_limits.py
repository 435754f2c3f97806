"""Parsing the gate's limits, one path for the command line (`--max-gap-increase missing=2`, repeatable) and the
config file (`max_gap_increase = 2` or `max_gap_increase = {missing = 2}`), so a bad value gets the same one-sentence
error from both, naming the option and what was expected, before any audit is read.

A limit is a mapping key -> number. The key is an impairment group (max_gap, max_gap_increase), a condition
(min_accuracy, min_worst_group, max_worst_group_drop) or a modality (max_bias_follow_increase). A plain number
means the option's default target: ALL (every group the audit has; the baseline's carrier) or `full`.
Modality and condition names depend on the audits, so the gate checks those once it has read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from biasaudit.comparing import GROUPS
from biasaudit.errors import InputError

ALL = "*"
JSD_STATISTICS = {"weighted": "weighted_mean", "mean": "mean"}


@dataclass(frozen=True)
class LimitOption:
    form: str  # what one item looks like, for the error
    example: str
    plain: str | None  # the key a plain number stands for; None: a key is required
    keys: tuple[str, ...] | None = None  # the only keys allowed (None: any name, checked against the audits later)
    low: float = -math.inf
    high: float = math.inf
    range_words: str = "a finite number"


_PERCENT = dict(low=0.0, high=100.0, range_words="a percentage between 0 and 100")
# A ratchet's limit is how far a measure may move the wrong way: a negative one would fail identical audits.
_POINTS = dict(low=0.0, range_words="a number of points >= 0")
OPTIONS: dict[str, LimitOption] = {
    "max_gap": LimitOption("POINTS or GROUP=POINTS", "30 or missing=30", ALL, GROUPS, low=0.0, range_words="a gap in points >= 0"),
    "max_gap_increase": LimitOption("POINTS or GROUP=POINTS", "2 or missing=2", ALL, GROUPS, **_POINTS),
    "min_accuracy": LimitOption("CONDITION=PERCENT", "full=90 or missing:image=40", None, **_PERCENT),
    "min_worst_group": LimitOption("CONDITION=PERCENT", "full=60 or missing:image=20", None, **_PERCENT),
    "max_worst_group_drop": LimitOption("POINTS or CONDITION=POINTS", "2 or full=2", "full", **_POINTS),
    "max_bias_follow_increase": LimitOption("POINTS or MODALITY=POINTS", "5 or text=5", ALL, **_POINTS),
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _one(key: str | None, value: Any, item: Any, label: str, spec: LimitOption) -> tuple[str, float]:
    number = _number(value)
    if (key is None and spec.plain is None) or key == "" or number is None or math.isnan(number):
        raise InputError(f"{label} {item!r} is not {spec.form} (e.g. {spec.example}).")
    key = spec.plain if key is None else key
    if spec.keys is not None and key not in spec.keys and key != ALL:
        raise InputError(f"{label} {item!r} names no impairment group {key!r}; expected {spec.form}. "
                         f"Available: {', '.join(spec.keys)}.")
    if not spec.low <= number <= spec.high or math.isinf(number):
        raise InputError(f"{label} {item!r}: {number:g} is not {spec.range_words}.")
    return key, number


def parse_limits(name: str, raw: Any, *, label: str | None = None) -> dict[str, float] | None:
    """The limits of option `name` from a number, a 'KEY=X' or 'X' string, a list of those, or a table;
    None when nothing is set."""
    spec, label = OPTIONS[name], label or "--" + name.replace("_", "-")
    if raw is None or (isinstance(raw, (list, tuple, Mapping)) and not raw):
        return None
    if isinstance(raw, Mapping):
        for k, v in raw.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(f"{label} {k} = {v!r} is {type(v).__name__}; expected a number (e.g. {spec.example}).")
        pairs = [(str(k), v, f"{k}={v}") for k, v in raw.items()]
    else:
        pairs = []
        for item in raw if isinstance(raw, (list, tuple)) else [raw]:
            key, sep, value = str(item).rpartition("=") if isinstance(item, str) else ("", "", item)
            pairs.append((key if sep else None, value, item))
    return dict(_one(key, value, item, label, spec) for key, value, item in pairs)


def parse_statistic(value: Any, *, label: str = "--jsd") -> str:
    """Which JSD statistic the max_jsd_drop rule reads."""
    if value not in JSD_STATISTICS:
        raise InputError(f"{label} {value!r} is not a JSD statistic. Available: {', '.join(JSD_STATISTICS)}.")
    return value
