"""The before/after report of a `fix` run: compare.json, both audits and the training log in, one
self-contained HTML page out."""

from __future__ import annotations

import os
from typing import Any, Mapping

from biasaudit.checkpoint import atomic_write_bytes
from biasaudit.report import figures, training_figures
from biasaudit.report.render import report_environment

COMPARE_TEMPLATE = "compare.html.j2"
SECTION_IDS = ("verdict", "summary", "conditions", "jsd", "embeddings", "training", "settings")


def _embedding_figure(audit: Mapping[str, Any]) -> str | None:
    section = audit.get("embeddings") or {}
    if not section.get("available"):
        return None
    names = (audit.get("dataset") or {}).get("class_names")
    return figures.figure_to_data_uri(figures.embedding_scatter(section["euclidean"], section["cosine"], section["labels"], class_names=names))


def render_compare_html(comparison: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any],
                        train_log: Mapping[str, Any] | None = None) -> str:
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
    context = {"comparison": comparison, "before": before, "after": after, "training": (train_log or {}).get("training"),
               "images": {k: v for k, v in images.items() if v}, "projection": projection, "section_ids": SECTION_IDS}
    return report_environment().get_template(COMPARE_TEMPLATE).render(context)


def write_compare_html(comparison: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any], path: str | os.PathLike,
                       train_log: Mapping[str, Any] | None = None) -> None:
    atomic_write_bytes(render_compare_html(comparison, before, after, train_log).encode("utf-8"), path)
