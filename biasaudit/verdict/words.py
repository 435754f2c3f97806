"""Figures as biasaudit writes them (verdicts, HTML pages, terminal tables, gate and leaderboard sentences): points,
percentages, changes and intervals, all through `number`; and which sections ran."""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Mapping

JSD_NAMES = {"weighted_mean": "weighted mean", "mean": "mean"}


def ran_section(audit: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The section when it exists and ran; None otherwise."""
    section = audit.get(key)
    return section if isinstance(section, Mapping) and section.get("available", True) else None


def one_decimal(value: float) -> str:
    """One decimal, without a trailing .0: 58.0 -> '58', 0.4 -> '0.4' (a setting such as a margin, not a measured figure)."""
    text = number(value)
    return text[:-2] if text.endswith(".0") else text


# How many decimals past the asked ones a nonzero figure may take to show a nonzero digit: -0.03 -> '-0.03', not '-0.0'.
EXTRA_DECIMALS = 3


def number(value: float | None, decimals: int = 1, *, signed: bool = False, scale: float = 1.0) -> str:
    """Every figure biasaudit prints (points, percentages, changes, interval bounds, JSD) goes through here, so that a
    figure keeps its sign: a nonzero value that would round to 0 gets more decimals, up to EXTRA_DECIMALS more, until a
    nonzero digit shows (an interval bound of -0.03 prints as -0.03, not '-0.0' nor a '0.0' that hides which side of zero
    it lies); past that it prints as 0.0, unsigned. Never '-0.0'. signed: a change, '+1.2' / '-1.2' ('+0.0' when exactly none);
    scale: 100 turns a fraction into percent. None is 'n/a'."""
    if value is None:
        return "n/a"
    value = scale * float(value)
    sign = "+" if signed else ""
    if not math.isfinite(value):
        return "n/a" if math.isnan(value) else f"{value:{sign}.{decimals}f}"
    if value == 0:
        return f"{0.0:{sign}.{decimals}f}"  # -0.0 included
    for places in range(decimals, decimals + EXTRA_DECIMALS + 1):
        text = f"{value:{sign}.{places}f}"
        if any(digit in text for digit in "123456789"):
            return text
    return f"{0.0:.{decimals}f}"  # too small to show: no sign, which would claim a direction


def interval(ci: Any, decimals: int = 1, *, scale: float = 1.0, unit: str = "") -> str:
    """'[lo, hi]' with each bound as `number` prints it (unit after each: '%'); '' when there is none."""
    if not ci or any(v is None for v in tuple(ci)):
        return ""
    low, high = (number(v, decimals, scale=scale) + unit for v in ci)
    return f"[{low}, {high}]"


def pts(value: float | None) -> str:
    """An accuracy or Gap in points, one decimal."""
    return number(value)


def ci_points(ci: Any) -> str:
    """' [lo, hi]' of an interval in points; '' when there is none."""
    text = interval(ci)
    return f" {text}" if text else ""


def pct(fraction: float | None) -> str:
    """A fraction as a percentage, always one decimal, so that a sentence never mixes '61%' with '35.9%'."""
    return "n/a" if fraction is None else f"{number(fraction, scale=100)}%"


def ci_pct(ci: Any) -> str:
    """' [lo, hi]' of an interval of fractions, in percent."""
    text = interval(ci, scale=100)
    return f" {text}" if text else ""


def change(delta: float | None, decimals: int = 1, *, scale: float = 1.0) -> str:
    """A signed change: '+1.2', '-0.03', 'n/a'."""
    return number(delta, decimals, signed=True, scale=scale)
