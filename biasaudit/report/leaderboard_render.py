"""The method leaderboard's page: leaderboard.json in, one self-contained HTML page out (issue 22).

The page needs nothing but the document: no model, no audits. Its two figures (the Pareto plot of each method's
change against the control, and the training curves) are drawn by leaderboard_figures.py from the document's numbers
read here, and embedded as PNG data URIs like every other report's; the CSS is the reports' shared _style.css.j2. The
template is inline so the page needs no file beyond the ones every report ships.
"""

from __future__ import annotations

import os
from typing import Any
from collections.abc import Mapping
from urllib.parse import quote

from matplotlib.figure import Figure

from biasaudit._core.files import atomic_write_bytes
from biasaudit.errors import BiasAuditError, InputError
from biasaudit.report import figures
from biasaudit.report.leaderboard_figures import loss_curves, pareto_plot
from biasaudit.report.render import MAX_REPORT_BYTES, format_interval, format_points, report_environment
from biasaudit.verdict.words import number

SECTION_IDS = ("verdict", "table", "pareto", "training", "settings")
# --primary's spelling -> the measure's name in the document.
PRIMARY_MEASURES = {"worst-group": "worst_group", "bias-balanced": "bias_balanced", "ood": "ood", "follow-rate": "follow_rate"}


def primary_measure(document: Mapping[str, Any]) -> str | None:
    """The bias measure the Pareto plot shows: the settings' primary one when the document has it, else the first bias
    measure it has (an in-distribution split has no OOD accuracy, a model without a carrier no follow rate)."""
    names = [m["name"] for m in document.get("measures") or []]
    primary = ((document.get("manifest") or {}).get("settings") or {}).get("primary") or (
        document.get("recommendation") or {}
    ).get("primary")
    wanted = PRIMARY_MEASURES.get(str(primary))
    if wanted in names:
        return wanted
    bias = [m["name"] for m in document.get("measures") or [] if m.get("kind") == "bias"]
    return bias[0] if bias else None


def _signed(value: float | None) -> str:
    return number(value, signed=True)


def compare_link(folder: str) -> str:
    """A seed's compare page, relative to the leaderboard's page. Percent-quoting leaves no scheme (':' is quoted)
    and stripping leading slashes leaves no host ('//x'), so data can never turn the link into an external one."""
    path = quote(str(folder).replace("\\", "/"), safe="/-._~").strip("/")
    return f"{path}/compare.html" if path else "compare.html"


def _check(document: Any) -> None:
    if not isinstance(document, Mapping) or document.get("schema") != "biasaudit.leaderboard":
        raise InputError('The page input is not a biasaudit leaderboard; expected a dict with "schema": "biasaudit.leaderboard".')
    if document.get("schema_version") != 1:
        raise InputError(f"The leaderboard has schema_version {document.get('schema_version')!r}; this page renders version 1.")
    missing = [key for key in ("manifest", "measures", "methods", "recommendation", "verdict") if key not in document]
    if missing:
        raise InputError(f"The leaderboard lacks its {', '.join(missing)} field(s); expected a complete leaderboard.json.")


def _change_cell(change: Mapping[str, Any] | None, better: str | None) -> dict[str, str]:
    if not change:
        return {"text": "n/a", "css": ""}
    text = _signed(change.get("delta"))
    if change.get("interval"):
        text += " " + format_interval(change["interval"])
    elif change.get("why_no_interval"):
        text += f" (no interval: {change['why_no_interval']})"
    css = ""
    if change.get("significant") and change.get("delta") is not None:
        improved = {"higher": change["delta"] > 0, "lower": change["delta"] < 0}.get(str(better))
        css = "significant " + ("" if improved is None else "better" if improved else "worse")
    return {"text": text, "css": css.strip()}


def _options_text(entry: Mapping[str, Any]) -> str | None:
    """ "scale chosen on val: 4, 8, 4 (seeds 0, 1, 2)": the option each seed's run chose on validation data."""
    options = entry.get("options")
    if not options:
        return None
    chosen = options.get("chosen") or {}
    values = ", ".join("-" if v is None else f"{v:g}" for v in chosen.values())
    text = f"{options['option']} chosen on {options['validated_on']}: {values} (seeds {', '.join(chosen)})"
    undecided = options.get("undecided_seeds") or []
    if undecided:
        text += (
            f"; on seed{'s' if len(undecided) > 1 else ''} {', '.join(map(str, undecided))} every value scored the same, "
            "so the default was kept"
        )
    return text


def table_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The table, display-ready: per method and measure the mean ± std after and the change against the control."""
    rows = []
    for entry in document["methods"]:
        cells = []
        for measure in document["measures"]:
            value = (entry.get("values") or {}).get(measure["name"]) or {}
            after = format_points(value.get("mean"))
            if value.get("std") is not None:
                after += f" ± {number(value['std'])}"
            change = (
                None
                if entry.get("control")
                else _change_cell((entry.get("changes") or {}).get(measure["name"]), measure.get("better"))
            )
            cells.append({"after": after, "change": change})
        runs = [{"seed": s["seed"], "href": compare_link(s["folder"])} for s in entry.get("seeds") or []]
        css = " ".join(name for name in ("control", "recommended") if entry.get(name))
        rows.append(
            {
                "method": entry["method"],
                "control": bool(entry.get("control")),
                "recommended": bool(entry.get("recommended")),
                "css": css,
                "cells": cells,
                "runs": runs,
                "kept": entry.get("kept_checkpoint"),
                "kept_note": entry.get("kept_note"),
                "options": _options_text(entry),
            }
        )
    return rows


def pareto_figure(document: Mapping[str, Any], primary: str | None) -> tuple[Figure | None, list[str]]:
    """The page's Pareto plot of a leaderboard document (None without a primary measure, Full accuracy or a method),
    and the methods it could not place (no change to plot)."""
    methods = [m for m in document["methods"] if not m.get("control")]
    measures = {m["name"]: m for m in document["measures"]}
    if primary is None or "full" not in measures or not methods:
        return None, []
    changes = [m.get("changes") or {} for m in methods]
    full = [(c.get("full") or {}) for c in changes]
    bias = [(c.get(primary) or {}) for c in changes]
    unplaced = [
        m["method"] for m, f, b in zip(methods, full, bias, strict=True) if f.get("delta") is None or b.get("delta") is None
    ]
    recommended = (document.get("recommendation") or {}).get("method")
    margin = float(
        (document.get("recommendation") or {}).get("max_full_drop")
        or ((document.get("manifest") or {}).get("settings") or {}).get("max_full_drop")
        or 0.0
    )
    fig = pareto_plot(
        [m["method"] for m in methods],
        [f.get("delta") for f in full],
        [f.get("interval") for f in full],
        [b.get("delta") for b in bias],
        [b.get("interval") for b in bias],
        control=document.get("control") or "ce",
        margin=margin,
        bias_label=measures[primary].get("label") or primary,
        bias_better=measures[primary].get("better"),
        recommended=recommended,
    )
    return fig, unplaced


def _images(document: Mapping[str, Any], primary: str | None) -> tuple[dict[str, str], list[str]]:
    """The figures as data URIs, and the methods the Pareto plot could not place."""
    images: dict[str, str] = {}
    fig, unplaced = pareto_figure(document, primary)
    if fig is not None:
        images["pareto"] = figures.figure_to_data_uri(fig)
    curves = {
        m["method"]: {s["seed"]: list(s.get("epoch_loss") or []) for s in m.get("seeds") or []} for m in document["methods"]
    }
    if any(losses for seeds in curves.values() for losses in seeds.values()):
        images["curves"] = figures.figure_to_data_uri(loss_curves(curves))
    return images, unplaced


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, rest = divmod(float(seconds), 60.0)
    return f"{seconds:.1f} s" if minutes < 1 else f"{int(minutes)} min {rest:.0f} s ({seconds:.0f} s)"


def render_leaderboard_html(document: Mapping[str, Any], *, max_bytes: int = MAX_REPORT_BYTES) -> str:
    """The leaderboard as one self-contained HTML page. InputError when `document` is not a version-1 leaderboard,
    BiasAuditError when the page would exceed `max_bytes`."""
    _check(document)
    primary = primary_measure(document)
    images, unplaced = _images(document, primary)
    manifest = document.get("manifest") or {}
    measures = {m["name"]: m for m in document["measures"]}
    run_seconds = sum(float(s.get("wall_time_s") or 0.0) for m in document["methods"] for s in m.get("seeds") or [])
    context = {
        "doc": document,
        "manifest": manifest,
        "settings": manifest.get("settings") or {},
        "recommendation": document.get("recommendation") or {},
        "measures": document["measures"],
        "rows": table_rows(document),
        "images": images,
        "unplaced": unplaced,
        "section_ids": SECTION_IDS,
        "primary_label": (measures.get(primary) or {}).get("label") or primary,
        "wall_time": _duration(manifest.get("wall_time_s")),
        "run_time": _duration(run_seconds),
        "sentences": [(m["method"], m["sentence"]) for m in document["methods"] if m.get("sentence")],
        "kept_chosen_on": next((m["kept_chosen_on"] for m in document["methods"] if m.get("kept_chosen_on")), None),
    }
    html = report_environment().from_string(_TEMPLATE).render(context)
    size = len(html.encode("utf-8"))
    if size > max_bytes:
        raise BiasAuditError(
            f"The leaderboard page would be {size / 2**20:.1f} MiB, above the {max_bytes / 2**20:.1f} MiB limit; "
            "compare fewer methods or seeds."
        )
    return html


def write_leaderboard_html(document: Mapping[str, Any], path: str | os.PathLike, *, max_bytes: int = MAX_REPORT_BYTES) -> None:
    """Render the leaderboard and write it atomically, so a reader never sees half a page."""
    atomic_write_bytes(render_leaderboard_html(document, max_bytes=max_bytes).encode("utf-8"), path)


# Autoescaped (report_environment); only the figures' data URIs and the hrefs built by compare_link are computed here.
_TEMPLATE = """\
{%- set control = doc.control -%}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{% set run = doc.get("run") or {} %}{% if run.get("id") %}<meta name="biasaudit-run" content="{{ run.id }}">
{% endif %}<meta name="viewport" content="width=device-width, initial-scale=1">
<title>biasaudit method leaderboard</title>
<style>
{% include "_style.css.j2" %}
  tr.recommended td { background: #e8f6f0; }
  tr.control td { color: #555; }
  .tag.recommended { background: #1b9e77; color: #fff; }
  .tag.control { background: #666; color: #fff; }
  td.significant { font-weight: 700; }
  td.significant.better { color: #137a5c; }
  td.significant.worse { color: #c0392b; }
  td.runs a { margin-right: 0.4rem; }
</style>
</head>
<body>
<h1>biasaudit method leaderboard</h1>
<p class="meta">split <strong>{{ doc.split }}</strong>{% if doc.ood %} (out of distribution){% endif %} ·
   control <strong>{{ control }}</strong> · seeds {{ settings.get("seeds", [])|join(", ") }}
   {% if doc.carrier %}· bias carrier <strong>{{ doc.carrier }}</strong>{% endif %}</p>

<section id="verdict">
  <p class="verdict">{{ doc.verdict }}</p>
  {% if recommendation.get("verdict") and recommendation.verdict != doc.verdict %}<p>{{ recommendation.verdict }}</p>{% endif %}
  {% if recommendation.get("reasons") %}
  <ul class="explain">
    {% for reason in recommendation.reasons %}<li>{{ reason }}</li>{% endfor %}
  </ul>
  {% endif %}
  <p class="explain">The rule: a method is recommended only when a bias measure improves with a 95% interval excluding
     zero and Full accuracy is non-inferior (it loses at most {#
       #}{{ recommendation.get("max_full_drop", settings.get("max_full_drop"))|points }}
     points); ties go to the better {{ primary_label or "primary bias measure" }}. The intervals cover both the audited samples
     and the spread over training seeds.</p>
</section>

<section id="table">
  <h2>Methods against the control</h2>
  <p class="explain">Per measure: the mean ± standard deviation over seeds after training, then the change against the control
     {{ control }} in points with its 95% interval. {#
       #}<strong>Bold</strong>: the interval excludes zero (green: better, red: worse).</p>
  <table>
    <thead>
      <tr><th rowspan="2">method</th>{% for m in measures %}<th colspan="2">{{ m.label }}{% if m.better %} ({#
        #}{{ m.better }} is better){% endif %}</th>{% endfor %}<th rowspan="2" class="text">runs (compare pages)</th></tr>
      <tr>{% for m in measures %}<th>after</th><th>vs {{ control }}</th>{% endfor %}</tr>
    </thead>
    <tbody>
    {% for row in rows %}
      <tr{% if row.css %} class="{{ row.css }}"{% endif %}>
        <td>{{ row.method }}{% if row.control %} <span class="tag control">control</span>{% endif %}{#
          #}{% if row.recommended %} <span class="tag recommended">recommended</span>{% endif %}{% if row.options %}<br>{#
          #}<small>{{ row.options }}</small>{% endif %}</td>
        {% for cell in row.cells %}<td>{{ cell.after }}</td>{% if cell.change is none %}<td>(control)</td>{% else %}<td{#
          #}{% if cell.change.css %} class="{{ cell.change.css }}"{% endif %}>{{ cell.change.text }}</td>{% endif %}{% endfor %}
        <td class="runs text">{% for r in row.runs %}<a href="{{ r.href }}">seed {{ r.seed }}</a>{% endfor %}{#
          #}{% if row.kept %}<br>kept: <code>{{ row.kept }}</code>{% endif %}{% if row.kept_note %}<br><small>{#
          #}{{ row.kept_note }}</small>{% endif %}</td>
      </tr>
    {% endfor %}
    </tbody>
  </table>
  {% if sentences %}
  <ul class="explain">
    {% for method, sentence in sentences %}<li><strong>{{ method }}</strong>: {{ sentence }}</li>{% endfor %}
  </ul>
  {% endif %}
  {% if kept_chosen_on %}<p class="explain">Kept checkpoints (--keep best): {{ kept_chosen_on }}.</p>{% endif %}
</section>

<section id="pareto">
  <h2>Bias against accuracy</h2>
  {% if "pareto" in images %}
  <p class="explain">Each method's change against the control: Full accuracy across, {{ primary_label }} up or down, with 95%
     intervals both ways. The control sits at (0, 0); a method left of the dashed line may cost more accuracy than the margin.</p>
  <figure><img src="{{ images.pareto }}" alt="Pareto plot: change in {#
    #}{{ primary_label }} against change in Full accuracy, per method"></figure>
  {% if unplaced %}<p class="note unavailable">Not plotted (a change could not be computed): {{ unplaced|join(", ") }}.</p>{#
    #}{% endif %}
  {% else %}<p class="note unavailable">Not available: the leaderboard has no bias measure, no Full accuracy, or no method {#
    #}besides the control.</p>{% endif %}
</section>

<section id="training">
  <h2>Training curves</h2>
  {% if "curves" in images %}
  <p class="explain">Mean training loss per epoch, one line per seed.</p>
  <figure><img src="{{ images.curves }}" alt="mean training loss per epoch, per method and seed"></figure>
  {% else %}<p class="note unavailable">Not available: no run recorded its loss per epoch.</p>{% endif %}
</section>

<section id="settings">
  <h2>Settings</h2>
  <p>{{ manifest.get("selection", "") }}</p>
  <table><tbody>
    {% for key, value in settings.items() %}<tr><th>{{ key }}</th><td class="text">{{ value|plain }}</td></tr>{% endfor %}
    <tr><th>wall time</th><td class="text">{{ wall_time }} in all; {{ run_time }} in the runs</td></tr>
    <tr><th>device</th><td class="text">{{ manifest.get("device")|plain }}</td></tr>
    <tr><th>biasaudit</th><td class="text">{{ manifest.get("biasaudit")|plain }}</td></tr>
    {% if manifest.get("checkpoint") %}<tr><th>checkpoint</th><td class="mono">{{ manifest.checkpoint.path }} (sha256 {#
      #}{{ manifest.checkpoint.sha256 }})</td></tr>{% endif %}
    {% if manifest.get("adapter") %}<tr><th>adapter</th><td class="mono">{{ manifest.adapter }}</td></tr>{% endif %}
    {% if run.get("id") %}<tr><th>run id</th><td class="mono">{{ run.id }}</td></tr>{% endif %}
  </tbody></table>
</section>
</body>
</html>
"""
