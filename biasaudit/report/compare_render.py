"""The before/after report of a `fix` run: compare.json, both audits and the training log in, one
self-contained HTML page out."""

from __future__ import annotations

import os
from typing import Any
from collections.abc import Mapping

from biasaudit._core.files import atomic_write_bytes
from biasaudit.report import figures, training_figures
from biasaudit.report.render import report_environment
from biasaudit.report.diagnostic_sections import group_measure_conditions
from biasaudit.verdict import change, ci_pct, ci_points, number, pct, pts

COMPARE_TEMPLATE = "compare.html.j2"
SECTION_IDS = ("verdict", "bias", "summary", "conditions", "jsd", "embeddings", "training", "settings")


def _row(measure: str, before: str, after: str, moved: str = "") -> dict[str, str]:
    return {"measure": measure, "before": before, "after": after, "change": moved}


def _points_change(entry: Mapping[str, Any]) -> str:
    return "n/a" if entry.get("delta") is None else f"{change(entry['delta'])}{ci_points(entry.get('delta_ci'))}"


def bias_rows(comparison: Mapping[str, Any], before: Mapping[str, Any]) -> list[dict[str, str]]:
    """The bias-measures table, display-ready: the measures come in three units (percent accuracy, bias-follow
    fractions shown as percent with changes in points, JSD in [0, 1]), so formatting them here keeps the
    template to one loop. Measures an audit lacks are left out; `lacking` in the comparison says why.
    Worst-group and bias-balanced accuracy get a row per condition only where the condition has figures of its own (Full
    and the missing modalities, as in the audit's page; `before` names the conditions' kinds): the ratio rungs repeat them
    at partial strength, and a row without a figure on either side says nothing."""
    bias = comparison.get("bias") or {}
    carrier = bias.get("carrier") or {}
    rows = (
        [_row("bias carrier (largest excess bias-follow rate)", carrier.get("before") or "none", carrier.get("after") or "none")]
        if carrier.get("before") or carrier.get("after")
        else []
    )
    for m, entry in (bias.get("bias_follow") or {}).items():
        moved = (
            "n/a" if entry.get("delta") is None else f"{change(entry['delta'], scale=100)}{ci_pct(entry.get('delta_ci'))} points"
        )
        rows.append(_row(f"excess bias-follow rate, {m} swapped", pct(entry["before"]), pct(entry["after"]), moved))
    for key, what in (("worst_group", "worst-group accuracy"), ("bias_balanced", "bias-balanced accuracy")):
        per_condition = bias.get(key) or {}
        for condition in group_measure_conditions(before, per_condition):
            entry = per_condition[condition]
            if entry.get("before") is None and entry.get("after") is None:
                continue
            rows.append(_row(f"{what}, {condition}", pts(entry["before"]), pts(entry["after"]), _points_change(entry)))
    if bias.get("ood"):
        rows.append(
            _row(
                "OOD accuracy (Full, on this shifted split)",
                pts(bias["ood"]["before"]),
                pts(bias["ood"]["after"]),
                _points_change(bias["ood"]),
            )
        )
    for key, what in (("weighted_mean", "JSD weighted mean"), ("mean", "JSD mean")):
        entry = (comparison.get("jsd") or {}).get(key) or {}
        if entry.get("before") is not None or entry.get("after") is not None:
            moved = (
                ""
                if None in (entry.get("before"), entry.get("after"))
                else f"{change(entry['after'] - entry['before'], 3)} (no interval)"
            )
            rows.append(_row(what, number(entry.get("before"), 3), number(entry.get("after"), 3), moved))
    return rows


def _embedding_figure(audit: Mapping[str, Any]) -> str | None:
    section = audit.get("embeddings") or {}
    if not section.get("available"):
        return None
    names = (audit.get("dataset") or {}).get("class_names")
    return figures.figure_to_data_uri(
        figures.embedding_scatter(section["euclidean"], section["cosine"], section["labels"], class_names=names)
    )


def render_compare_html(
    comparison: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any], train_log: Mapping[str, Any] | None = None
) -> str:
    steps = list((train_log or {}).get("steps") or [])
    images = {"before_embeddings": _embedding_figure(before), "after_embeddings": _embedding_figure(after)}
    projection = None
    if steps and any(s.get("cos_before") is not None for s in steps):
        cos_before = [s.get("cos_before") for s in steps]
        cos_after = [s.get("cos_after") for s in steps]
        images["projection"] = figures.figure_to_data_uri(training_figures.projection_histogram(cos_before, cos_after))
        raw = [c for c in cos_before if c is not None]
        projection = {"fraction_conflicting": sum(c < 0 for c in raw) / len(raw) if raw else None, "steps": len(steps)}
    if steps:
        named = ((train_log or {}).get("training") or {}).get("settings", {}).get("modalities")
        modalities = named if isinstance(named, list) and len(named) == 2 else ("1st modality", "2nd modality")
        images["curves"] = figures.figure_to_data_uri(training_figures.training_curves(steps, modalities=modalities))
    context = {
        "comparison": comparison,
        "before": before,
        "after": after,
        "training": (train_log or {}).get("training"),
        "bias_rows": bias_rows(comparison, before),
        "bias_lacking": [why for whys in ((comparison.get("bias") or {}).get("lacking") or {}).values() for why in whys],
        "verdict_sentences": list(comparison.get("verdict_sentences") or []),
        "images": {k: v for k, v in images.items() if v},
        "projection": projection,
        "section_ids": SECTION_IDS,
    }
    return report_environment().get_template(COMPARE_TEMPLATE).render(context)


def write_compare_html(
    comparison: Mapping[str, Any],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    path: str | os.PathLike,
    train_log: Mapping[str, Any] | None = None,
) -> None:
    atomic_write_bytes(render_compare_html(comparison, before, after, train_log).encode("utf-8"), path)
