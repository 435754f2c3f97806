"""The report's figures: plain data in, a matplotlib Figure out.

Every function builds its own `matplotlib.figure.Figure` (Agg canvas) and never touches pyplot's
global state, so figures can be made from any thread and nothing leaks between reports. None of
them reads an audit dict: the renderer picks the numbers out and passes them in.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

# Modest resolution: the report embeds every figure, and it should stay a few hundred kilobytes.
DEFAULT_DPI = 80
_MAX_LABEL_CHARS = 28
_FEW_CLASSES_CMAP = "tab10"


def figure_to_data_uri(fig: Figure, *, dpi: int = DEFAULT_DPI) -> str:
    """The figure as a `data:image/png;base64,...` URI, for embedding in a self-contained page."""
    buffer = io.BytesIO()
    # No "Software" entry: the PNG bytes then depend only on the data, not on the matplotlib build.
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _label(text: object) -> str:
    """User text made safe for matplotlib: '$' would start mathtext, long names would crowd the axes."""
    text = str(text).replace("$", r"\$")
    return text if len(text) <= _MAX_LABEL_CHARS else text[: _MAX_LABEL_CHARS - 1] + "…"


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _error_below_above(values: Sequence[float], intervals: Sequence[Sequence[float | None] | None]) -> np.ndarray:
    """Asymmetric error-bar lengths from [lo, hi] intervals; a missing interval draws no bar."""
    below, above = [], []
    for value, interval in zip(values, intervals, strict=True):
        lo, hi = interval if interval else (None, None)
        below.append(0.0 if lo is None or math.isnan(value) else max(value - lo, 0.0))
        above.append(0.0 if hi is None or math.isnan(value) else max(hi - value, 0.0))
    return np.array([below, above])


def condition_bars(
    names: Sequence[str],
    accuracies: Sequence[float | None],
    intervals: Sequence[Sequence[float | None] | None],
    *,
    full_accuracy: float | None = None,
    highlight: Sequence[bool] | None = None,
) -> Figure:
    """Accuracy per condition with its 95% interval; `highlight` marks negative transfer."""
    values = [_number(a) for a in accuracies]
    fig = Figure(figsize=(max(5.0, 0.55 * len(names) + 2.0), 3.6), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(names))
    flags = list(highlight) if highlight is not None else [False] * len(names)
    colors = ["#d95f02" if flag else "#1b9e77" for flag in flags]
    ax.bar(x, values, color=colors, yerr=_error_below_above(values, intervals), capsize=3, ecolor="#333333")
    if full_accuracy is not None:
        ax.axhline(full_accuracy, color="#555555", linestyle="--", linewidth=1, label="Full")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(x, [_label(n) for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy per condition (95% interval)", fontsize=10)
    return fig


def ratio_sweep(curves: Mapping[str, Sequence[Mapping[str, Any]]], *, full_accuracy: float | None = None) -> Figure:
    """Accuracy against the fraction of samples with the modality muted, one line and band per modality.

    Each point is a mapping with "ratio", "accuracy" and optionally "accuracy_ci".
    """
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.add_subplot()
    palette = colormaps["Dark2"]
    for index, (modality, points) in enumerate(curves.items()):
        ratios = np.array([_number(p["ratio"]) for p in points])
        acc = np.array([_number(p["accuracy"]) for p in points])
        color = palette(index % palette.N)
        ax.plot(ratios, acc, marker="o", color=color, label=f"{_label(modality)} muted")
        bounds = [p.get("accuracy_ci") or (None, None) for p in points]
        lows = [b[0] for b in bounds if b[0] is not None]
        highs = [b[1] for b in bounds if b[1] is not None]
        if len(lows) == len(highs) == len(points):  # a band only where every point has its interval
            ax.fill_between(ratios, lows, highs, color=color, alpha=0.2, linewidth=0)
    if full_accuracy is not None:
        ax.axhline(full_accuracy, color="#555555", linestyle="--", linewidth=1, label="Full")
    ax.set_xlabel("fraction of samples with the modality muted")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 100)
    if curves or full_accuracy is not None:
        ax.legend(fontsize=8)
    ax.set_title("Missing-ratio sweep (band: 95% interval)", fontsize=10)
    return fig


def reliance_heatmap(classes: Sequence[str], drops: Mapping[str, Sequence[float | None]]) -> Figure:
    """Accuracy points lost per class (rows) when each modality is muted (columns); red = relied on."""
    matrix = np.array([[_number(v) for v in column] for column in drops.values()], dtype=float).T
    if matrix.size == 0:
        matrix = np.full((len(classes), max(len(drops), 1)), math.nan)
    height = min(max(2.5, 0.28 * len(classes) + 1.2), 14.0)
    fig = Figure(figsize=(max(3.5, 1.3 * len(drops) + 2.5), height), layout="constrained")
    ax = fig.add_subplot()
    finite = np.abs(matrix[np.isfinite(matrix)])
    limit = max(float(finite.max()) if finite.size else 0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    fig.colorbar(image, ax=ax, label="accuracy drop (points)")
    ax.set_xticks(np.arange(len(drops)), [f"{_label(m)} muted" for m in drops], fontsize=8)
    label_every = max(1, math.ceil(len(classes) / 40))
    rows = np.arange(0, len(classes), label_every)
    ax.set_yticks(rows, [_label(classes[int(i)]) for i in rows], fontsize=7)
    ax.set_ylabel("class")
    if len(classes) <= 20 and len(drops) <= 6:
        for (row, col), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                ax.text(
                    col,
                    row,
                    f"{value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if abs(value) > 0.6 * limit else "black",
                )
    ax.set_title("Per-class reliance", fontsize=10)
    return fig


def jsd_bars(
    bias_names: Sequence[str], soft: Sequence[float | None], argmax: Sequence[float | None], *, weighted_mean: float | None = None
) -> Figure:
    """JSD per bias value for both variants, with the 0.5 line below which baselines usually sit."""
    fig = Figure(figsize=(max(5.0, 0.45 * len(bias_names) + 2.5) + 1.4, 3.4), layout="constrained")  # + the legend's column
    ax = fig.add_subplot()
    x = np.arange(len(bias_names))
    width = 0.4
    ax.bar(x - width / 2, [_number(v) for v in soft], width, label="soft", color="#7570b3")
    ax.bar(x + width / 2, [_number(v) for v in argmax], width, label="argmax", color="#e7298a")
    ax.axhline(0.5, color="#999999", linestyle=":", linewidth=1, label="0.5")
    if weighted_mean is not None:
        ax.axhline(weighted_mean, color="#333333", linestyle="--", linewidth=1, label="weighted mean (soft)")
    ax.set_xticks(x, [_label(n) for n in bias_names], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("JSD (bits)")
    # Outside the axes, right of them: inside, any corner can sit on a bar (JSD runs up to 1, the top of the axes).
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    ax.set_title("JSD between mistakes and the bias-conditioned label prior", fontsize=10)
    return fig


def embedding_scatter(
    euclidean: Sequence[Sequence[float]],
    cosine: Sequence[Sequence[float]],
    labels: Sequence[int],
    *,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """The same samples projected from Euclidean and from cosine space, side by side, coloured by label."""
    fig = Figure(figsize=(9.0, 4.2), layout="constrained")
    labels_array = np.asarray(labels, dtype=int)
    present = sorted(set(labels_array.tolist()))
    cmap = colormaps[_FEW_CLASSES_CMAP if len(present) <= 10 else "tab20"]
    size = 12 if len(labels_array) <= 1000 else 4
    for index, (points, title) in enumerate(((euclidean, "Euclidean"), (cosine, "cosine (L2-normalised)"))):
        ax = fig.add_subplot(1, 2, index + 1)
        xy = np.asarray(points, dtype=float).reshape(-1, 2)
        for order, label in enumerate(present):
            mask = labels_array == label
            name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=cmap(order % cmap.N), label=_label(name), linewidths=0)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if 0 < len(present) <= 20:
        fig.legend(*fig.axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=7, markerscale=1.5)
    return fig


def conflict_histogram(pairs: Sequence[Mapping[str, Any]]) -> Figure:
    """Histogram of per-batch gradient cosines, one panel per modality pair; left of 0 = conflict.

    Each pair is a mapping with "a", "b" and "histogram": {"edges": [...], "counts": [...]}, or
    "cosines" from which a 20-bin histogram over [-1, 1] is made.
    """
    count = max(len(pairs), 1)
    fig = Figure(figsize=(min(4.2 * count, 12.6), 3.2), layout="constrained")
    for index, pair in enumerate(pairs):
        ax = fig.add_subplot(1, count, index + 1)
        histogram = pair.get("histogram")
        if histogram:
            edges = np.asarray(histogram["edges"], dtype=float)
            counts = np.asarray(histogram["counts"], dtype=float)
        else:
            cosines = [c for c in pair.get("cosines") or [] if c is not None]
            counts, edges = np.histogram(cosines, bins=20, range=(-1.0, 1.0))
        ax.stairs(counts, edges, fill=True, color="#66a61e", alpha=0.8)
        ax.axvline(0.0, color="#d95f02", linestyle="--", linewidth=1)
        ax.set_xlim(-1, 1)
        ax.set_xticks([-1, -0.5, 0, 0.5, 1])
        ax.set_xlabel("cos(g_a, g_b)")
        ax.set_ylabel("batches")
        ax.set_title(f"{_label(pair['a'])} vs {_label(pair['b'])}", fontsize=10)
    return fig


def carrier_bars(
    modalities: Sequence[str],
    excess: Sequence[float | None],
    intervals: Sequence[Sequence[float | None] | None],
    *,
    carrier: str | None = None,
) -> Figure:
    """Excess bias-follow rate per modality (fractions, drawn as %) with its interval; the carrier in orange."""
    values = [100 * _number(v) for v in excess]
    scaled = [[None if v is None else 100 * v for v in interval] if interval else None for interval in intervals]
    fig = Figure(figsize=(max(4.5, 0.9 * len(modalities) + 2.0), 3.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(modalities))
    colors = ["#d95f02" if m == carrier else "#7570b3" for m in modalities]
    ax.bar(x, values, color=colors, yerr=_error_below_above(values, scaled), capsize=3, ecolor="#333333")
    ax.axhline(0.0, color="#555555", linewidth=1)
    ax.set_xticks(x, [_label(m) for m in modalities], fontsize=8)
    ax.set_ylabel("excess bias-follow rate (%)")
    ax.set_title("Excess bias-follow rate (95% interval)", fontsize=10)
    return fig


def reliability_diagrams(
    panels: Mapping[str, Sequence[Mapping[str, float | None]]], *, ece: Mapping[str, float | None] | None = None
) -> Figure:
    """One reliability diagram per condition: accuracy per confidence bin against the diagonal.

    Each bin is a mapping with "lo", "hi" (confidence, 0-1), "count" and "accuracy" (percent, None
    when empty); bars below the diagonal are over-confident.
    """
    count = max(len(panels), 1)
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(2.9 * columns + 0.4, 2.8 * rows), layout="constrained")
    for index, (name, bins) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, columns, index + 1)
        lows = np.array([_number(b["lo"]) for b in bins])
        widths = np.array([_number(b["hi"]) for b in bins]) - lows
        accuracy = np.array([_number(b.get("accuracy")) / 100 for b in bins])
        ax.bar(lows, np.nan_to_num(accuracy), width=widths, align="edge", color="#1b9e77", edgecolor="white")
        ax.plot([0, 1], [0, 1], color="#d95f02", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        value = (ece or {}).get(name)
        ax.set_title(_label(name) + ("" if value is None else f"  ECE {value:.3f}"), fontsize=9)
    return fig


def _short_number(value: float) -> str:
    """-0.5 -> '-0.5', 1.0 -> '1', 1/3 -> '0.33'; never '-0'."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def shapley_bars(distributions: Mapping[str, Mapping[str, int]]) -> Figure:
    """Share of samples at each per-sample Shapley value, one bar group per value and a bar per modality.

    Keys of each distribution are the values as strings ("-0.5"), as the audit JSON writes them.
    """
    values = sorted({float(v) for dist in distributions.values() for v in dist})
    fig = Figure(figsize=(max(5.0, 0.7 * len(values) + 2.5), 3.2), layout="constrained")
    ax = fig.add_subplot()
    palette = colormaps["Dark2"]
    width = 0.8 / max(len(distributions), 1)
    x = np.arange(len(values))
    for index, (modality, dist) in enumerate(distributions.items()):
        counts = {float(v): c for v, c in dist.items()}
        total = sum(counts.values()) or 1
        shares = [100 * counts.get(v, 0) / total for v in values]
        ax.bar(
            x + (index - (len(distributions) - 1) / 2) * width,
            shares,
            width,
            label=_label(modality),
            color=palette(index % palette.N),
        )
    ax.set_xticks(x, [_short_number(v) for v in values], fontsize=8)
    ax.set_xlabel("per-sample Shapley value on correctness")
    ax.set_ylabel("samples (%)")
    if distributions:
        ax.legend(fontsize=8)
    ax.set_title("Per-sample modality value", fontsize=10)
    return fig
