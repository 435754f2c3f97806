"""Interaction share by a sampled EMAP (Hessel & Lee 2020; methods.md section 9).

The additive projection of f keeps what each modality contributes on its own:
  f_hat(x_i) = sum_m mean_j f(x_i[m], x_j[-m]) - (M - 1) * mean over independent donors of f,
where x_j[-m] takes every modality but m from donor j. accuracy(f) - accuracy(f_hat) is how much the model
gains from cross-modal interaction. Each sample gets R donors, drawn in proportion to the split's (label, bias value)
groups (diagnostics/donors.py) and split in two halves, the first R // 2 and the rest: each half draws from
its own half of the donor pool.

The constant is taken over the sample's own donors, so that for an additive model f(x) = sum_m g_m(x[m])
the projection equals f exactly at any R and the share is exactly 0 (a global constant would leave a
per-sample remainder). Its r-th forward takes modality m from the donor m places further round r's half (a
cyclic shift within the half): each donor lends each modality once, and the modalities of one forward come
from different donors while a half holds at least M of them, as EMAP's mean over independent pairs asks.
(A donor's own logits f(x_j) pair inputs that belong together, which for a model with interactions is
another constant, and biased the share at any R.)

Bias and its correction: the means over R donors of a pool of P entries are Monte-Carlo estimates of the
means over the split, and their noise moves the argmax of f_hat, which lowers its accuracy and inflates the
share by about c / R + c' / P. Each half of the donors, from its half of the pool, gives a projection of its
own from the same forwards, biased by about twice that; the share reported is the Richardson extrapolation
(a S(R) - S_halves) / (a - 1), with S_halves the mean of the halves' shares and a = R (1/h1 + 1/h2) / 2 (2 for
an even R: 2 S(R) - S(R/2)), which cancels both first-order terms. The uncorrected S(R) is reported beside
it (docs/methods.md, "EMAP constant", has the measured numbers). Cost: R (M + 1) forwards per sample,
which is why the diagnostic is opt-in.

Interval: the scan's Poisson bootstrap weights of the samples (those of every accuracy, so compare can pair
replicates) weigh five integer counts per replicate: the samples, and those that Full, the R-donor
projection and each half's projection get right. Integers merge by addition, so a sharded scan gives the
same replicates to the last digit. The pool's donors are not resampled: the interval is over the audited
samples, each with its own donors.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from biasaudit.diagnostics.donors import DONOR_DRAW
from biasaudit.diagnostics.accuracy import exact_weighted_sums, percentile_interval, replicate_accuracy

DEFAULT_DONORS = 8
# Rows of InteractionAccumulator.weighted: the weights of all samples, and of those right under Full, under the
# R-donor projection, and under the first and the second half's projection.
_TOTAL, _FULL, _ALL, _FIRST, _SECOND = range(5)


class InteractionAccumulator:
    def __init__(self, *, modalities: int, donors: int, replicates: int = 1000) -> None:
        self.modalities, self.donors, self.replicates = modalities, donors, replicates
        self.n = self.full_correct = self.additive_correct = self.half_correct = 0
        self.weighted = np.zeros((5, replicates), dtype=np.int64)

    @property
    def halves(self) -> list[range]:
        """The donors of the two half projections; none for a single donor."""
        first = self.donors // 2
        return [range(0, first), range(first, self.donors)] if first else []

    def half_of(self, draw: int) -> int | None:
        """Which half (0 or 1) the draw-th donor belongs to, and so which half of the pool it comes from; None without halves."""
        halves = self.halves
        return None if not halves else int(draw in halves[1])

    def constant_donors(self) -> np.ndarray:
        """[M, R]: which of the sample's R donors lends modality m to the r-th forward of the constant."""
        out = np.tile(np.arange(self.donors), (self.modalities, 1))
        for half in self.halves:
            for m in range(self.modalities):
                out[m, half.start : half.stop] = half.start + (np.arange(len(half)) + m) % len(half)
        return out

    def update(
        self,
        kept: list[list[np.ndarray]],
        constant: list[np.ndarray],
        full_prediction: np.ndarray,
        labels: np.ndarray,
        weights: np.ndarray,
    ) -> None:
        """kept[m][r]: [B, C] logits with modality m of the sample and the rest from its r-th donor; constant[r]: [B, C]
        logits of the r-th forward of the constant (constant_donors()); weights: the batch's [B, replicates] bootstrap weights."""
        # Float64 sums, so that the projection of an additive model keeps its logits' argmax.
        terms = np.sum([np.stack(draws).astype(np.float64) for draws in kept], axis=0)
        terms -= (self.modalities - 1) * np.stack(constant).astype(np.float64)  # [R, B, C]: one projection per donor
        right = np.zeros((5, len(labels)), dtype=bool)
        right[_TOTAL] = True
        right[_FULL] = full_prediction == labels
        right[_ALL] = terms.mean(axis=0).argmax(axis=1) == labels
        # A single donor has no halves: both half rows then stay False, so a shorter `halves` is intended.
        for row, half in zip((_FIRST, _SECOND), self.halves, strict=False):
            right[row] = terms[half.start : half.stop].mean(axis=0).argmax(axis=1) == labels
        counts = np.count_nonzero(right, axis=1)
        self.n += len(labels)
        self.full_correct += int(counts[_FULL])
        self.additive_correct += int(counts[_ALL])
        self.half_correct += int(counts[_FIRST] + counts[_SECOND])
        self.weighted += exact_weighted_sums(right, weights)

    def merge(self, other: InteractionAccumulator) -> None:
        self.n += other.n
        self.full_correct += other.full_correct
        self.additive_correct += other.additive_correct
        self.half_correct += other.half_correct
        self.weighted += other.weighted

    def _extrapolation(self) -> float | None:
        """a of the module docstring: S_halves' bias over S(R)'s; None without halves."""
        halves = self.halves
        return self.donors * (1 / len(halves[0]) + 1 / len(halves[1])) / 2 if halves else None

    def _share(self, full: Any, additive: Any, halves: Any, total: Any) -> Any:
        """The corrected share (points) from counts, scalars or per-replicate arrays; halves counts both halves."""
        plain = replicate_accuracy(full, total) - replicate_accuracy(additive, total)
        a = self._extrapolation()
        if a is None:
            return plain
        # In differences from Full: an additive model's are exactly 0, so its share is exactly 0 at any R.
        of_halves = replicate_accuracy(full, total) - 0.5 * replicate_accuracy(halves, total)
        return (a * plain - of_halves) / (a - 1)

    def section(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The interaction section, and its per-replicate share for bootstrap.derived."""
        if not self.n:
            return {"available": False, "note": "No sample had donors, so the additive projection could not be formed."}, {}
        accuracy = 100.0 * self.full_correct / self.n
        share = float(self._share(self.full_correct, self.additive_correct, self.half_correct, self.n))
        w = self.weighted
        replicates = self._share(w[_FULL], w[_ALL], w[_FIRST] + w[_SECOND], w[_TOTAL])
        interval = percentile_interval(replicates)
        a = self._extrapolation()
        if a is None:
            estimator, note = (
                "S(R), uncorrected",
                (
                    "With one donor the share cannot be corrected for the noise of the sampled "
                    "projection, which inflates it; use at least 2 donors (default 8)."
                ),
            )
        else:
            estimator, note = ("2 S(R) - S(R/2)" if a == 2 else f"({a:.6g} S(R) - S(halves)) / {a - 1:.6g}"), None
        return (
            {
                "available": True,
                "note": note,
                "donors": self.donors,
                "donor_draw": DONOR_DRAW,
                "estimator": estimator,
                # The measured R-donor projection's accuracy; the share is corrected from it (and may exceed Full minus it).
                "accuracy": accuracy,
                "additive_accuracy": 100.0 * self.additive_correct / self.n,
                "interaction_share": share,
                "interaction_share_ci": list(interval) if interval is not None else None,
                "plain_interaction_share": accuracy - 100.0 * self.additive_correct / self.n,
            },
            {"interaction_share": replicates},
        )
