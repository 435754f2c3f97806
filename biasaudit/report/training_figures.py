"""Figures of a `fix` run, pure like figures.py: the training log in, a matplotlib Figure out."""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

_CURVES = (
    ("loss", "task loss L_T"),
    ("loss_v", "unimodal loss L_{v}"),
    ("loss_l", "unimodal loss L_{l}"),
    ("weight_v", "KL weight w_{v}"),
    ("weight_l", "KL weight w_{l}"),
    ("lam", "lambda_t"),
)


def training_curves(
    steps: Sequence[Mapping[str, Any]], *, modalities: Sequence[str] = ("1st modality", "2nd modality")
) -> Figure:
    """Losses on the left, BalGrad's weights and lambda on the right, against the step; `modalities` names v and l
    (BalGrad's settings record them). The right panel only when the log has BalGrad's figures: other methods (MMDB, DFR...)
    log none, and an empty panel titled after BalGrad would read as a failed run."""
    x = [s["step"] for s in steps]
    names = {"v": modalities[0], "l": modalities[1]}
    curves = {key: (template.format(**names), [s.get(key) for s in steps]) for key, template in _CURVES}
    curves = {key: curve for key, curve in curves.items() if any(v is not None for v in curve[1])}
    balgrad = any(not key.startswith("loss") for key in curves)
    fig = Figure(figsize=(9.0 if balgrad else 5.5, 3.6), layout="constrained")
    panels = {"losses": fig.add_subplot(1, 2 if balgrad else 1, 1)}
    if balgrad:
        panels["BalGrad weights and lambda"] = fig.add_subplot(1, 2, 2)
    for key, (label, values) in curves.items():
        axis = panels["losses" if key.startswith("loss") else "BalGrad weights and lambda"]
        axis.plot(x, [np.nan if v is None else v for v in values], label=label, linewidth=1)
    for title, axis in panels.items():
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step")
        if axis.lines:
            axis.legend(fontsize=7)
    return fig


def projection_histogram(cos_before: Sequence[float], cos_after: Sequence[float]) -> Figure:
    """cos(g_T, g_kl) per step before and after BalGrad's projection (methods.md section 5)."""
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    axis = fig.subplots()
    edges = np.linspace(-1, 1, 21).tolist()  # matplotlib's bins: a sequence of floats
    axis.hist([c for c in cos_before if c is not None], bins=edges, alpha=0.6, label="raw")
    axis.hist([c for c in cos_after if c is not None], bins=edges, alpha=0.6, label="projected")
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_xlabel("cos(g_T, g_kl) per step")
    axis.set_ylabel("steps")
    axis.legend(fontsize=8)
    return fig
