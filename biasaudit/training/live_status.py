"""The live line next to the training bar: this epoch's running means of the logged losses.

Only what the step logs carry is shown, under short names: the task loss of every method, and for
BalGrad the unimodal losses, λ and the share of steps whose gradients conflicted. Means over the
epoch so far, not the last step, because single-batch losses jump too much to read.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Mapping

# log key -> (label, format); the order is the display order.
SHOWN: dict[str, tuple[str, str]] = {
    "loss": ("loss", "{:.3f}"),
    "loss_v": ("L_v", "{:.3f}"),
    "loss_l": ("L_l", "{:.3f}"),
    "lam": ("λ", "{:.2f}"),
    "conflicted": ("conflicts", "{:.0%}"),
}


class EpochMeans:
    """Running means of the SHOWN fields over one epoch's step logs."""

    def __init__(self, *, epoch: int, epochs: int) -> None:
        self.epoch, self.epochs = epoch, epochs
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, entry: Mapping[str, Any]) -> None:
        for key in SHOWN:
            value = entry.get(key)
            if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
                self._counts[key] = self._counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {key: self._sums[key] / self._counts[key] for key in SHOWN if key in self._counts}

    def status(self) -> str:
        parts = [f"epoch {self.epoch + 1}/{self.epochs}"]
        parts += [f"{SHOWN[key][0]} {SHOWN[key][1].format(value)}" for key, value in self.means().items()]
        return " · ".join(parts)
