"""Rendering an audit dict (the audit.json) into one self-contained HTML file.

The report needs nothing but the audit dict: no model, no data. Figures are embedded as PNG data
URIs and the page carries its own CSS, so it opens offline and makes no network request.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Mapping

import jinja2

from biasaudit._core.files import atomic_write_bytes
from biasaudit.errors import BiasAuditError, InputError
from biasaudit.report import diagnostic_sections as diagnostics
from biasaudit.report import figures
from biasaudit.verdict.words import change, interval, number, pct

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+; the annotation alone needs it
    from importlib.resources.abc import Traversable

AUDIT_TEMPLATE = "audit.html.j2"
# The id attribute of every section of the audit report, in page order.
SECTION_IDS = (
    "verdict",
    "bias-measures",
    "summary",
    "ceilings",
    "mute-checks",
    "groups",
    "conditions",
    "ratio-sweep",
    "reliance",
    "shapley",
    "interaction",
    "calibration",
    "jsd",
    "embeddings",
    "gradient-conflict",
    "notes",
    "manifest",
)
MAX_REPORT_BYTES = 20 * 1024 * 1024
_REQUIRED_KEYS = ("manifest", "dataset", "summary", "conditions")
_OPTIONAL_ANALYSES = {"jsd": "JSD", "embeddings": "embedding", "gradient_conflict": "gradient-conflict"}


def templates_dir() -> Traversable:
    """Where the report templates are: inside the installed package, else the repository's templates/."""
    packaged = resources.files("biasaudit") / "templates"
    if (packaged / AUDIT_TEMPLATE).is_file():
        return packaged
    # An editable install runs from the source tree, where templates/ sits next to the package.
    return Path(str(resources.files("biasaudit"))).parent / "templates"


def report_environment() -> jinja2.Environment:
    """The Jinja2 environment of every biasaudit report: autoescaped, strict about undefined names."""
    root = templates_dir()

    def load(name: str) -> str | None:
        source = root / name
        return source.read_text(encoding="utf-8") if source.is_file() else None

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        points=format_points,
        change=format_change,
        interval=format_interval,
        percent=format_percent,
        decimal=format_decimal,
        plain=_plain,
        percent_interval=format_percent_interval,
        decimal_interval=format_decimal_interval,
    )
    return env


def format_points(value: float | None) -> str:
    """An accuracy or gap in percentage points with one decimal."""
    return number(value)


def format_change(value: float | None) -> str:
    """A change in points, signed: '+1.2', '-0.03'."""
    return change(value)


def format_interval(ci: Any) -> str:
    return interval(ci)


def format_percent_interval(ci: Any) -> str:
    """An interval of fractions (a bias-follow rate's) as percentages: [0.6, 0.72] -> '[60.0%, 72.0%]'."""
    return interval(ci, scale=100, unit="%")


def format_decimal_interval(ci: Any) -> str:
    return interval(ci, 3)


def format_percent(fraction: float | None) -> str:
    """A fraction of samples (flip rate) as a percentage with one decimal: 0.6 -> '60.0%', 0.005 -> '0.5%'."""
    return pct(fraction)


def format_decimal(value: float | None) -> str:
    return number(value, 3)


def _plain(value: Any) -> str:
    """A manifest value as text: scalars as they are, containers as compact JSON."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return "n/a" if value is None else str(value)


def verdict(audit: Mapping[str, Any]) -> str:
    """One plain sentence: which modality dominates, by how much, and the missing-modality Gap."""
    missing = audit["summary"].get("missing")
    if not missing:
        return "No verdict: fewer than two modalities were muted, so there is no missing-modality Gap."
    rates = missing.get("flip_rates") or {}
    dominant = missing.get("dominant")
    gap = f"missing-modality Gap {format_points(missing.get('gap'))} points"
    if missing.get("gap_ci"):
        gap += " " + format_interval(missing["gap_ci"])
    if dominant is None or dominant not in rates:
        changes = ", ".join(f"{format_percent(r)} for {m}" for m, r in rates.items())
        return f"No single modality dominates (muting changes {changes} of predictions); {gap}."
    others = ", ".join(f"{format_percent(r)} for {m}" for m, r in rates.items() if m != dominant)
    return f"{dominant} dominates: muting it changes {format_percent(rates[dominant])} of predictions vs {others}; {gap}."


def _check_audit(audit: Any) -> None:
    if not isinstance(audit, Mapping) or audit.get("schema") != "biasaudit.audit":
        raise InputError('The report input is not a biasaudit audit; expected a dict with "schema": "biasaudit.audit".')
    if audit.get("schema_version") != 1:
        raise InputError(f"The audit has schema_version {audit.get('schema_version')!r}; this report renders version 1.")
    missing = [key for key in _REQUIRED_KEYS if key not in audit]
    if missing:
        raise InputError(
            f"The audit lacks its {', '.join(missing)} section(s); expected a complete audit.json from `biasaudit scan`."
        )


def _analysis(audit: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """An optional analysis section, or an unavailable one whose note says it is absent."""
    section = audit.get(key)
    if not isinstance(section, Mapping):
        return {"available": False, "note": f"This audit has no {_OPTIONAL_ANALYSES[key]} section."}
    if not section.get("available"):
        return {"available": False, "note": section.get("note") or f"The {_OPTIONAL_ANALYSES[key]} analysis was not run."}
    return section


def _class_names(audit: Mapping[str, Any]) -> list[str]:
    names = audit["dataset"].get("class_names")
    if names:
        return [str(n) for n in names]
    return [str(i) for i in range(int(audit["dataset"].get("num_classes") or 0))]


def _figures(audit: Mapping[str, Any], analyses: Mapping[str, Mapping[str, Any]], classes: list[str]) -> dict[str, str]:
    """Every figure the report shows, as data URIs; a figure without data is left out."""
    out: dict[str, str] = {}
    full = audit["summary"]["full"].get("accuracy")
    # Ratio conditions get their own curve, so the bars show the other conditions.
    bars = [c for c in audit["conditions"] if c.get("group") != "ratio"] or list(audit["conditions"])
    if bars:
        out["conditions"] = figures.figure_to_data_uri(
            figures.condition_bars(
                [c["name"] for c in bars],
                [c.get("accuracy") for c in bars],
                [c.get("accuracy_ci") for c in bars],
                full_accuracy=full,
                highlight=[bool(c.get("negative_transfer")) for c in bars],
            )
        )
    sweep = audit.get("ratio_sweep") or {}
    if sweep:
        out["ratio_sweep"] = figures.figure_to_data_uri(figures.ratio_sweep(sweep, full_accuracy=full))
    reliance = audit.get("reliance") or {}
    if reliance.get("drop"):
        out["reliance"] = figures.figure_to_data_uri(
            figures.reliance_heatmap([str(c) for c in reliance.get("classes") or classes], reliance["drop"])
        )
    jsd = analyses["jsd"]
    if jsd["available"] and jsd.get("per_bias") and not diagnostics.no_mistakes(jsd):
        per_bias = jsd["per_bias"]
        out["jsd"] = figures.figure_to_data_uri(
            figures.jsd_bars(
                list(per_bias),
                [v.get("soft") for v in per_bias.values()],
                [v.get("argmax") for v in per_bias.values()],
                weighted_mean=jsd.get("weighted_mean"),
            )
        )
    embeddings = analyses["embeddings"]
    if embeddings["available"] and embeddings.get("labels"):
        out["embeddings"] = figures.figure_to_data_uri(
            figures.embedding_scatter(embeddings["euclidean"], embeddings["cosine"], embeddings["labels"], class_names=classes)
        )
    conflict = analyses["gradient_conflict"]
    if conflict["available"] and conflict.get("pairs"):
        out["gradient_conflict"] = figures.figure_to_data_uri(figures.conflict_histogram(conflict["pairs"]))
    return out


def render_audit_html(audit: Mapping[str, Any], *, max_bytes: int = MAX_REPORT_BYTES) -> str:
    """The audit report as one self-contained HTML page.

    Raises InputError when `audit` is not a version-1 audit dict, and BiasAuditError when the page
    would exceed `max_bytes` (a report that large would not open comfortably in a browser).
    """
    _check_audit(audit)
    analyses = {key: _analysis(audit, key) for key in _OPTIONAL_ANALYSES}
    sections = {
        key: diagnostics.section(audit, key)
        for key in ("groups", "carrier", "ceilings", "calibration", "shapley", "interaction", "mute_checks")
    }
    classes = _class_names(audit)
    modalities = [m["name"] for m in audit["dataset"].get("modalities") or []]
    headline, sentences = diagnostics.verdict_lines(audit, verdict(audit))
    jsd_no_mistakes = diagnostics.no_mistakes(analyses["jsd"])
    notes = list(audit.get("notes") or [])
    # Older scans wrote no note for a mistake-free split; the reader should not see "No notes." then.
    if jsd_no_mistakes and not any("no mistakes" in str(note).lower() for note in notes):
        notes.append("JSD: " + diagnostics.NO_MISTAKES)
    context = {
        "audit": audit,
        "verdict": headline,
        "verdict_sentences": sentences,
        "classes": classes,
        "section_ids": SECTION_IDS,
        "modalities": modalities,
        "jsd": analyses["jsd"],
        "jsd_no_mistakes": jsd_no_mistakes,
        "no_mistakes_text": diagnostics.NO_MISTAKES,
        "embeddings": analyses["embeddings"],
        "conflict": analyses["gradient_conflict"],
        "ratio_sweep": audit.get("ratio_sweep") or {},
        "reliance": audit.get("reliance") or {},
        "conditions_by_name": {c["name"]: c for c in audit["conditions"]},
        **sections,
        "group_table": diagnostics.group_table(audit, sections["groups"]),
        "calibration_rows": diagnostics.calibration_rows(audit, sections["calibration"]),
        "carrier_rows": diagnostics.carrier_rows(sections["carrier"], modalities) if sections["carrier"]["available"] else [],
        "contingency_rows": diagnostics.contingency_rows(sections["shapley"].get("contingency") or {}),
        "notes": notes,
        "max_table_rows": diagnostics.MAX_TABLE_ROWS,
        "figures": {**_figures(audit, analyses, classes), **diagnostics.figures_of(audit, sections, modalities)},
    }
    html = report_environment().get_template(AUDIT_TEMPLATE).render(context)
    size = len(html.encode("utf-8"))
    if size > max_bytes:
        raise BiasAuditError(
            f"The HTML report would be {size / 2**20:.1f} MiB, above the {max_bytes / 2**20:.1f} MiB limit; "
            "reduce the embedding points or the number of conditions."
        )
    return html


def write_audit_html(audit: Mapping[str, Any], path: str | os.PathLike, *, max_bytes: int = MAX_REPORT_BYTES) -> None:
    """Render the audit and write it atomically, so a reader never sees half a report."""
    atomic_write_bytes(render_audit_html(audit, max_bytes=max_bytes).encode("utf-8"), path)
