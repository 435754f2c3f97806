"""A figure with its 95% interval: the one shape every typed measure of an audit, a comparison or a leaderboard takes.

Units are the documents': accuracies and their changes in percent (points), rates (flip, bias-follow, confidence
rise) as fractions, as audit.json and compare.json hold them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Interval = tuple[float, float] | None


def interval_of(value: Any) -> Interval:
    return (float(value[0]), float(value[1])) if value is not None else None


def number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


@dataclass(frozen=True)
class Estimate:
    """`value` and its 95% interval [`low`, `high`] (None when the document has none: too few samples, or not paired)."""

    value: float | None
    low: float | None = None
    high: float | None = None

    @classmethod
    def _of(cls, value: Any, interval: Any = None) -> Estimate:
        bounds = interval_of(interval)
        return cls(number_or_none(value), *(bounds if bounds is not None else (None, None)))

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any] | None, key: str, interval_key: str | None = None) -> Estimate | None:
        """entry[key] with entry[key + "_ci"] (or entry[interval_key]); None without the entry."""
        if not entry:
            return None
        return cls._of(entry.get(key), entry.get(interval_key or f"{key}_ci"))

    @property
    def interval(self) -> Interval:
        return (self.low, self.high) if self.low is not None and self.high is not None else None

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or below 0 (a change beyond the sampling noise it measures)."""
        interval = self.interval
        return interval is not None and (interval[0] > 0 or interval[1] < 0)

    def __str__(self) -> str:
        def shown(x: float) -> str:
            return f"{x + 0.0:.4g}"  # four significant digits keep a small bound's sign; + 0.0: a negative zero reads as 0

        if self.value is None:
            return "n/a"
        interval = self.interval
        return shown(self.value) + (f" [{shown(interval[0])}, {shown(interval[1])}]" if interval is not None else "")
