"""What the report's bias-diagnostic sections show (methods.md section 9), picked out of the audit dict.

The template only lays out; the choices live here: which section is absent or unavailable and why,
which group rows fit on the page, which conditions get a calibration panel, and the figures.
Audits written before these diagnostics lack their keys entirely and must still render.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Mapping

from biasaudit.report import figures

# The scan writes one row per (label, bias value), and per class; thousands of rows would bury the
# page, and the worst groups are what a reader acts on. audit.json keeps them all.
MAX_TABLE_ROWS = 60
# Per-condition tables (group accuracies, calibration) leave out the ratio sweep: its points repeat a
# missing condition at partial strength and would multiply the columns.
TABLE_GROUPS = ("full", "missing", "noisy", "custom")
# The conditions whose worst-group and bias-balanced accuracy are figures of their own, as the scan keeps them (with their
# own bootstrap replicates, which compare pairs): Full and each missing modality. The other conditions' values repeat these
# at partial strength (ratio:image:1 is missing:image) and would fill the tables with copies.
GROUP_MEASURE_GROUPS = ("full", "missing")
NO_MISTAKES = "The model makes no mistakes on this split, so there is nothing to measure."
# Diagnostics the user names in --conditions (the rest always run); shapley and interaction are off by default.
_CHOSEN = ("carrier", "ceilings", "shapley", "interaction")
_OFF_BY_DEFAULT = ("shapley", "interaction")
_TITLES = {
    "groups": "groups",
    "carrier": "carrier-test",
    "ceilings": "ceilings",
    "calibration": "calibration",
    "shapley": "Shapley",
    "interaction": "interaction",
    "mute_checks": "mute-check",
}


def _absent_note(audit: Mapping[str, Any], key: str) -> str:
    """Why a section is missing: left out of --conditions, or an audit from before the diagnostic existed.

    Only audits that list their diagnostics can tell the two apart; Shapley and interaction are opt-in,
    so for them the advice to ask for them holds either way.
    """
    if key in _OFF_BY_DEFAULT:
        return f"not run: add {key} to --conditions (e.g. --conditions default,{key})."
    if key in _CHOSEN and "diagnostics" in audit:
        return f"not run: add {key} to --conditions."
    return f"This audit has no {_TITLES[key]} section: an older biasaudit wrote it; scan again to get one."


def section(audit: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A diagnostic section, or an unavailable one with the note that says why.

    mute_checks has no "available" flag: it is there or not.
    """
    value = audit.get(key)
    if not isinstance(value, Mapping):
        return {"available": False, "note": _absent_note(audit, key)}
    if value.get("available", key == "mute_checks"):
        return {**value, "available": True}
    return {"available": False, "note": value.get("note") or f"The {_TITLES[key]} diagnostic did not run."}


def verdict_lines(audit: Mapping[str, Any], fallback: str) -> tuple[str, list[str]]:
    """The scan's verdict headline and sentences; `fallback` for audits written before the verdict section."""
    written = audit.get("verdict")
    if isinstance(written, Mapping) and written.get("headline"):
        return str(written["headline"]), [str(s) for s in written.get("sentences") or []]
    return fallback, []


def _condition_names(audit: Mapping[str, Any], groups: tuple[str, ...], present: Any) -> list[str]:
    """The audit's conditions of the given groups that `present` has, in the audit's order."""
    return [c["name"] for c in audit["conditions"] if c.get("group") in groups and c["name"] in present]


def _sort_key(row: Mapping[str, Any]) -> tuple[bool, float]:
    full = (row.get("accuracy") or {}).get("full")
    # Counted groups first: an uncounted group of two samples at 0% is noise, not the worst group.
    return (not row.get("counted"), math.inf if full is None else full)


def group_table(audit: Mapping[str, Any], groups: Mapping[str, Any]) -> dict[str, Any]:
    """The group rows that fit on the page, worst first, their accuracy columns and what was left out."""
    rows = sorted(groups.get("groups") or [], key=_sort_key)
    shown, left = rows[:MAX_TABLE_ROWS], rows[MAX_TABLE_ROWS:]
    accuracies = {name for row in rows for name in row.get("accuracy") or {}}
    return {
        "rows": shown,
        "columns": _condition_names(audit, TABLE_GROUPS, accuracies),
        "left_out": len(left),
        "left_out_counted": sum(bool(row.get("counted")) for row in left),
        "conditions": [
            (name, groups["conditions"][name]) for name in group_measure_conditions(audit, groups.get("conditions") or {})
        ],
    }


def group_measure_conditions(audit: Mapping[str, Any], present: Any) -> list[str]:
    """The conditions that `present` has whose worst-group and bias-balanced figures are their own (GROUP_MEASURE_GROUPS),
    in the audit's order."""
    return _condition_names(audit, GROUP_MEASURE_GROUPS, present)


def calibration_rows(audit: Mapping[str, Any], calibration: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    per_condition = calibration.get("conditions") or {}
    return [(name, per_condition[name]) for name in _condition_names(audit, TABLE_GROUPS, per_condition)]


def carrier_rows(carrier: Mapping[str, Any], modalities: list[str]) -> list[tuple[str, Mapping[str, Any]]]:
    """(modality, its swaps) in the dataset's modality order, then any the dataset does not list."""
    tested = carrier.get("modalities") or {}
    order = [m for m in modalities if m in tested] + [m for m in tested if m not in modalities]
    return [(m, tested[m]) for m in order]


def contingency_rows(contingency: Mapping[str, int]) -> list[tuple[str, int]]:
    """Readable row labels for the unimodal-correctness counts ("only:image" -> "only image")."""
    names = {"both": "every modality", "neither": "none", "none": "none"}
    return [(names.get(key, key.replace("only:", "only ").replace("+", " and ")), count) for key, count in contingency.items()]


def no_mistakes(jsd: Mapping[str, Any]) -> bool:
    """JSD ran but there is no wrong prediction to compare with the bias prior (every figure is null)."""
    per_bias = jsd.get("per_bias") or {}
    return bool(jsd.get("available") and per_bias and not any(row.get("n_wrong") for row in per_bias.values()))


def figures_of(audit: Mapping[str, Any], sections: Mapping[str, Mapping[str, Any]], modalities: list[str]) -> dict[str, str]:
    """The diagnostic sections' figures as data URIs; a figure without data is left out."""
    out: dict[str, str] = {}
    carrier = sections["carrier"]
    rows = carrier_rows(carrier, modalities) if carrier["available"] else []
    if rows:
        swaps = [row.get("bias_swap") or {} for _, row in rows]
        out["carrier"] = figures.figure_to_data_uri(
            figures.carrier_bars(
                [m for m, _ in rows],
                [s.get("excess_follow_rate") for s in swaps],
                [s.get("excess_follow_rate_ci") for s in swaps],
                carrier=carrier.get("carrier"),
            )
        )
    calibration = sections["calibration"]
    if calibration["available"]:
        per_condition = calibration.get("conditions") or {}
        names = [n for n in _condition_names(audit, ("full", "missing"), per_condition) if per_condition[n].get("reliability")]
        if names:
            out["calibration"] = figures.figure_to_data_uri(
                figures.reliability_diagrams(
                    {n: per_condition[n]["reliability"] for n in names}, ece={n: per_condition[n].get("ece") for n in names}
                )
            )
    shapley = sections["shapley"]
    distributions = {m: v["distribution"] for m, v in (shapley.get("modalities") or {}).items() if v.get("distribution")}
    if shapley["available"] and distributions:
        out["shapley"] = figures.figure_to_data_uri(figures.shapley_bars(distributions))
    return out
