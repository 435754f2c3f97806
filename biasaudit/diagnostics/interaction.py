"""Interaction share by a sampled EMAP (Hessel & Lee 2020; methods.md section 9).

The additive projection of f keeps what each modality contributes on its own:
  f_hat(x_i) = sum_m mean_j f(x_i[m], x_j[-m]) - (M - 1) * mean_j f(x_j),
where x_j[-m] takes every modality but m from donor j. accuracy(f) - accuracy(f_hat) is how much the model
gains from cross-modal interaction. Each sample gets R donors from the donor pool. Hessel & Lee's constant
term is a mean of f over independent pairs; we take it over the sample's own R donors (f(x_j): every
modality from donor j), so that for an additive model f(x) = sum_m g_m(x[m]) the projection equals f
exactly at any R, and the share is exactly 0 (a global constant would leave a per-sample remainder).
Costs R * (M + 1) forwards per sample, which is why the diagnostic is opt-in; memory is two counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_DONORS = 8


class InteractionAccumulator:
    def __init__(self, *, modalities: int, donors: int) -> None:
        self.modalities, self.donors = modalities, donors
        self.n = self.full_correct = self.additive_correct = 0

    def update(self, kept: list[list[np.ndarray]], donor_logits: list[np.ndarray], full_prediction: np.ndarray, labels: np.ndarray) -> None:
        """kept[m][r]: [B, C] logits with modality m of the sample and the rest from its r-th donor;
        donor_logits[r]: [B, C] logits of the r-th donor itself."""
        additive = np.sum([np.mean(np.stack(draws), axis=0) for draws in kept], axis=0)
        additive = additive - (self.modalities - 1) * np.mean(np.stack(donor_logits), axis=0)
        self.n += len(labels)
        self.full_correct += int(np.count_nonzero(full_prediction == labels))
        self.additive_correct += int(np.count_nonzero(additive.argmax(axis=1) == labels))

    def merge(self, other: InteractionAccumulator) -> None:
        self.n += other.n
        self.full_correct += other.full_correct
        self.additive_correct += other.additive_correct

    def section(self) -> dict[str, Any]:
        if not self.n:
            return {"available": False, "note": "No sample had donors, so the additive projection could not be formed."}
        accuracy, additive = 100.0 * self.full_correct / self.n, 100.0 * self.additive_correct / self.n
        return {"available": True, "note": None, "donors": self.donors, "accuracy": accuracy, "additive_accuracy": additive,
                "interaction_share": accuracy - additive}
