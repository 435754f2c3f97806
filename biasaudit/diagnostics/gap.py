"""Avg and Gap over the modalities, and the dominant modality (methods.md section 2).

`scores` maps each modality to the score measured when *that* modality is impaired (A_m), e.g.
{"image": accuracy with the image missing, "text": accuracy with the text missing}. So the
modality named `lowest` is the one whose loss hurts most.

Gap definitions:
- two modalities a, b (in the mapping's order): Gap = |A_a - A_b|, signed Gap = A_a - A_b;
- more than two: Gap = max_m A_m - min_m A_m and the signed Gap equals it (there is no natural
  order to sign it by; `highest` and `lowest` name the two ends instead).
Intervals apply the same formula to every paired bootstrap replicate (the same resampled samples
for every modality) and take the 2.5 and 97.5 percentiles, so two identical conditions get a Gap
interval of exactly [0, 0].
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping

import numpy as np

from biasaudit.errors import InputError
from biasaudit.diagnostics.accuracy import percentile_interval

Interval = tuple[float, float]


@dataclass(frozen=True)
class GapSummary:
    avg: float
    gap: float  # percentage points, >= 0
    signed_gap: float
    scores: dict[str, float]
    avg_ci: Interval | None
    gap_ci: Interval | None
    signed_gap_ci: Interval | None
    highest: str  # modality with the highest A_m (first in order on ties)
    lowest: str  # modality with the lowest A_m (first in order on ties)

    def to_dict(self) -> dict:
        def interval(value: Interval | None) -> list[float] | None:
            return list(value) if value is not None else None

        return {
            "avg": self.avg,
            "gap": self.gap,
            "signed_gap": self.signed_gap,
            "scores": dict(self.scores),
            "avg_ci": interval(self.avg_ci),
            "gap_ci": interval(self.gap_ci),
            "signed_gap_ci": interval(self.signed_gap_ci),
            "highest": self.highest,
            "lowest": self.lowest,
        }


def _avg_gap_signed(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values [M, ...] -> (avg, gap, signed gap), each over axis 0."""
    avg = values.mean(axis=0)
    if values.shape[0] == 2:
        signed = values[0] - values[1]
        return avg, np.abs(signed), signed
    spread = values.max(axis=0) - values.min(axis=0)
    return avg, spread, spread


def summarize_gap(scores: Mapping[str, float], *, replicates: Mapping[str, np.ndarray] | None = None) -> GapSummary:
    """Avg and Gap of per-modality scores, with paired bootstrap intervals when replicates are given."""
    names = list(scores)
    if len(names) < 2:
        raise InputError(f"A Gap needs scores of at least two modalities; got {names}.")
    values = np.array([float(scores[m]) for m in names])
    if not np.all(np.isfinite(values)):
        raise InputError(f"Scores {dict(scores)} contain a non-finite value; expected finite percentages.")
    avg, gap, signed = (float(v) for v in _avg_gap_signed(values))
    avg_ci = gap_ci = signed_ci = None
    if replicates is not None:
        if set(replicates) != set(names):
            raise InputError(f"Replicates are given for {sorted(replicates)}; expected exactly the scored modalities {names}.")
        rows = [np.asarray(replicates[m], dtype=np.float64) for m in names]
        if len({r.shape for r in rows}) != 1 or rows[0].ndim != 1:
            raise InputError(
                f"Replicates have shapes {[r.shape for r in rows]}; expected one 1-D array of the "
                f"same length per modality (paired replicates)."
            )
        avg_r, gap_r, signed_r = _avg_gap_signed(np.stack(rows))
        avg_ci, gap_ci, signed_ci = (percentile_interval(r) for r in (avg_r, gap_r, signed_r))
    return GapSummary(
        avg=avg,
        gap=gap,
        signed_gap=signed,
        scores=dict(zip(names, values.tolist(), strict=True)),
        avg_ci=avg_ci,
        gap_ci=gap_ci,
        signed_gap_ci=signed_ci,
        highest=names[int(np.argmax(values))],
        lowest=names[int(np.argmin(values))],
    )


def dominant_modality(flip_rates: Mapping[str, float]) -> str:
    """The modality the model relies on most: the largest flip rate when it is missing.

    Ties go to the modality declared first (the mapping's order), so the answer is deterministic;
    a report should show the rates themselves next to the name when they are close.
    """
    names = list(flip_rates)
    if not names:
        raise InputError("No flip rates were given; expected one per modality under the missing condition.")
    rates = np.array([float(flip_rates[m]) for m in names])
    if not np.all(np.isfinite(rates)):
        raise InputError(f"Flip rates {dict(flip_rates)} contain a non-finite value; expected fractions in [0, 1].")
    return names[int(np.argmax(rates))]  # argmax returns the first maximum
