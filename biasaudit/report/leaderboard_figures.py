"""The method leaderboard page's two figures, drawn from numbers (no document, no pyplot state): the Pareto plot of each
method's change against the control, its labels placed so that none overlaps, and the training curves. Each is its own
matplotlib Figure; leaderboard_render.py embeds them as PNG data URIs like every other report's."""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox

from biasaudit.report import figures

_MAX_PANELS_PER_ROW = 4


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


# Where a label may sit around its point, tried in this order: (x, y) direction of the offset, then the text's alignment.
_LABEL_SPOTS = (
    ((1, 1), "left", "bottom"),
    ((1, -1), "left", "top"),
    ((-1, 1), "right", "bottom"),
    ((-1, -1), "right", "top"),
    ((1, 0), "left", "center"),
    ((-1, 0), "right", "center"),
    ((0, 1), "center", "bottom"),
    ((0, -1), "center", "top"),
)
_LABEL_PAD_POINTS = 2.0  # kept free around each label, so the PNG's other dpi (other text hinting) cannot make two touch
_LEADER_RINGS = 12  # fallback distances (rings of _LEADER_STEP_POINTS) before giving up on a free spot
_LEADER_STEP_POINTS = 14.0
_LEADER_ANGLES = 16


def pareto_plot(
    names: Sequence[str],
    full: Sequence[float | None],
    full_ci: Sequence[Sequence[float] | None],
    bias: Sequence[float | None],
    bias_ci: Sequence[Sequence[float] | None],
    *,
    control: str,
    margin: float,
    bias_label: str,
    bias_better: str | None,
    recommended: str | None = None,
) -> Figure:
    """Each method's change in the primary bias measure against its change in Full accuracy, both against the control,
    with 95% interval bars both ways; the control at (0, 0); the non-inferiority margin -margin as a dashed line.
    Labels never overlap: methods that change little all crowd the control, and their names must stay readable."""
    fig = Figure(figsize=(6.8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    ax.axhline(0, color="#999999", linewidth=0.7)
    ax.axvline(0, color="#999999", linewidth=0.7)
    ax.axvline(-margin, color="#c0392b", linestyle="--", linewidth=1.2, label=f"non-inferiority margin (-{margin:g} points)")
    ax.plot([0], [0], marker="s", markersize=9, color="#333333", linestyle="none", label=f"{figures._label(control)} (control)")
    # (text, point, colour, marker size in points, the spot to try first); the control's name first goes below right,
    # where it always was, clear of the methods' names above right.
    labels = [(figures._label(control), (0.0, 0.0), "#333333", 9.0, 1)]
    placed = []
    for index, (name, x, x_ci, y, y_ci) in enumerate(zip(names, full, full_ci, bias, bias_ci, strict=True)):
        if x is None or y is None:
            continue  # the page lists the methods it could not place
        best = name == recommended
        color = "#1b9e77" if best else "#d95f02"
        ax.errorbar(
            [x],
            [y],
            xerr=figures._error_below_above([x], [x_ci]),
            yerr=figures._error_below_above([y], [y_ci]),
            fmt="*" if best else "o",
            markersize=13 if best else 7,
            color=color,
            ecolor=color,
            elinewidth=1,
            capsize=3,
            label="recommended" if best else None,
        )
        label = (figures._label(name), (float(x), float(y)), color, 13.0 if best else 7.0, 0)
        placed.append(((not best, math.hypot(x, y), index), label))
    # The recommended method picks its spot first, then the rest from the crowded centre outwards: the outer ones have room.
    labels += [label for _, label in sorted(placed, key=lambda item: item[0])]
    direction = {"higher": "up is better", "lower": "down is better"}.get(str(bias_better), "no better direction")
    ax.set_xlabel(f"change in Full accuracy vs {figures._label(control)} (points; right is better)")
    ax.set_ylabel(f"change in {figures._label(bias_label)} (points; {direction})")
    ax.set_title("Bias against accuracy, each method vs the control (95% intervals)", fontsize=10)
    _place_labels(fig, ax, labels)
    ax.legend(fontsize=7, loc="best")  # after the labels: "best" then avoids them too
    return fig


def _place_labels(fig: Figure, ax: Any, labels: Sequence[tuple[str, tuple[float, float], str, float, int]]) -> None:
    """Each label at the first spot around its point where its text overlaps no label placed before it and no point's
    marker and stays inside the axes; failing all, further out with a thin leader line to its point. Deterministic:
    the same numbers give the same picture."""
    canvas = FigureCanvasAgg(fig)  # the backend the PNG is drawn with, so the measured text is the drawn text
    canvas.draw()  # lays the figure out; the labels stay out of the layout, so the axes do not move after this
    renderer = canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    to_pixels = fig.dpi / 72.0
    pad = _LABEL_PAD_POINTS * to_pixels
    markers = []
    for _, point, _, size, _ in labels:
        px, py = ax.transData.transform(point)
        half = size / 2.0 * to_pixels
        markers.append(Bbox.from_extents(px - half, py - half, px + half, py + half))
    taken: list[Bbox] = []

    def clash(box: Bbox) -> float:
        """How much of the label is hidden or hides something (0: a free spot)."""
        spaced = box.padded(pad)
        outside = box.width * box.height - _area(box, frame)
        return outside + sum(_area(spaced, other) for other in taken) + sum(_area(box, marker) for marker in markers)

    for text, point, color, size, first in labels:
        gap = size / 2.0 + 2.5  # clear of the point's own marker
        near = [((dx * gap, dy * gap), ha, va) for (dx, dy), ha, va in _LABEL_SPOTS[first:] + _LABEL_SPOTS[:first]]
        far = []
        for ring in range(1, _LEADER_RINGS + 1):
            radius = gap + ring * _LEADER_STEP_POINTS
            for step in range(_LEADER_ANGLES):
                angle = math.pi / 4 + 2 * math.pi * step / _LEADER_ANGLES
                dx, dy = math.cos(angle), math.sin(angle)
                far.append(
                    (
                        (radius * dx, radius * dy),
                        "left" if dx > 0.3 else "right" if dx < -0.3 else "center",
                        "bottom" if dy > 0.3 else "top" if dy < -0.3 else "center",
                    )
                )
        # Measured as drawn, with no arrow yet: a leader line's box would count as the text's.
        label = ax.annotate(
            text, point, xytext=(0, 0), textcoords="offset points", fontsize=8, color=color, annotation_clip=False
        )
        label.set_in_layout(False)
        best: tuple[float, int, tuple[float, float], str, str, Bbox] | None = None
        for spot_index, (offset, ha, va) in enumerate(near + far):
            label.xyann = offset
            label.set_horizontalalignment(ha)
            label.set_verticalalignment(va)
            box = label.get_window_extent(renderer)
            cost = clash(box)
            if best is None or cost < best[0]:
                best = (cost, spot_index, offset, ha, va, box)
            if cost == 0:
                break
        assert best is not None, "no spot was tried"  # near + far is never empty (_LABEL_SPOTS)
        _, spot_index, offset, ha, va, box = best
        if spot_index >= len(near):
            label.remove()
            label = ax.annotate(
                text,
                point,
                xytext=offset,
                textcoords="offset points",
                fontsize=8,
                color=color,
                ha=ha,
                va=va,
                annotation_clip=False,
                arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.6, "shrinkA": 1, "shrinkB": size / 2.0},
            )
            label.set_in_layout(False)
        else:
            label.xyann = offset
            label.set_horizontalalignment(ha)
            label.set_verticalalignment(va)
        taken.append(box)


def _area(a: Bbox, b: Bbox) -> float:
    """The area two boxes share (0 when they only touch or are apart)."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def loss_curves(curves: Mapping[str, Mapping[int, Sequence[float | None]]]) -> Figure:
    """Mean training loss per epoch: one panel per method, one line per seed, the same y-axis for all panels."""
    count = len(curves)
    columns = min(count, _MAX_PANELS_PER_ROW)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(2.6 * columns + 1.0, 2.4 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    # strict=False: the grid has as many axes as fill its rows, one per method and the spare ones hidden below.
    for ax, (method, seeds) in zip(axes, curves.items(), strict=False):
        for seed, losses in seeds.items():
            ax.plot(range(1, len(losses) + 1), [_number(v) for v in losses], marker=".", linewidth=1, label=f"seed {seed}")
        ax.set_title(figures._label(method), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6)
    for ax in axes[count:]:
        ax.set_visible(False)
    axes[0].set_ylabel("mean training loss", fontsize=8)
    return fig
