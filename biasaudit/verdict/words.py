"""Figures as the verdicts write them: points, percentages, intervals; and which sections ran."""

from __future__ import annotations

from typing import Any, Mapping

JSD_NAMES = {"weighted_mean": "weighted mean", "mean": "mean"}


def ran_section(audit: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The section when it exists and ran; None otherwise."""
    section = audit.get(key)
    return section if isinstance(section, Mapping) and section.get("available", True) else None


def one_decimal(value: float) -> str:
    """One decimal, without a trailing .0: 58.0 -> '58', 0.4 -> '0.4'."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def pts(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def ci_points(ci: Any) -> str:
    """' [lo, hi]' of an interval in points; '' when there is none."""
    return f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci and None not in tuple(ci) else ""


def pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{one_decimal(100 * fraction)}%"


def ci_pct(ci: Any) -> str:
    """' [lo, hi]' of an interval of fractions, in percent."""
    return f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci and None not in tuple(ci) else ""


