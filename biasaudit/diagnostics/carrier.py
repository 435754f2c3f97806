"""The carrier test: which modality carries the shortcut (methods.md section 9).

Flip rates measure reliance: which input the model needs. They cannot say where a shortcut runs: a
model can need the image for the content and still take the bias from the caption. So per modality m:
- bias swap: give sample i the raw m-input of a donor with the SAME label and ANOTHER bias value k_j.
  If predictions now move to a class that k_j's training prior favours, F(k_j) (diagnostics/favoured.py; a bias
  value may favour several classes), other than the sample's own label, m carries the bias.
- content swap (the control): a donor with ANOTHER label and the SAME bias value. If predictions follow
  the donor's label, m's content drives them.
- null swap (our addition, see docs/methods.md "Decisions"): a donor with the SAME label and the SAME bias
  value. Any swap also changes m's content (another sample's pixels or words), and a noisy modality
  that carries no bias then moves predictions, some of them into F(k_j) by chance. The null swap measures
  that content change alone, so the excess bias-follow rate is the bias swap's share of predictions
  in F(k_j) minus the null swap's share for the same target set: the part due to the bias value. (The
  same share among the un-swapped Full predictions, methods.md's reference, is reported beside it.)
  A modality the model ignores has exactly 0 either way.
The carrier is the modality with the largest excess bias-follow rate whose 95% interval lies above 0:
an excess that the resampling cannot tell from 0 names no carrier.

Donors come from a small pool, so many samples share a donor, and one odd donor moves all of them: a
bootstrap over samples alone would give intervals too narrow for that. Each replicate therefore also
reweights the donors (a crossed, "pigeonhole" bootstrap, Owen 2007): sample i's paired difference
[swap follows] - [null swap follows] counts with w_i * (u_j + u_j0), where u_j and u_j0 are Poisson(1)
weights of its donor and its null donor drawn from (seed, donor index, replicate).
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from biasaudit.diagnostics.donors import DONOR_DRAW
from biasaudit.diagnostics.favoured import follows
from biasaudit.diagnostics.accuracy import percentile_interval, replicate_accuracy


class SwapCounts:
    """Counts of one swap of one modality over the samples that got both its donor and a null donor:
    predictions that follow the donor's target under the swap, under the null swap and in Full; correct
    predictions and flips under the swap; weighted per bootstrap replicate (sample weight x donor weight)."""

    def __init__(self, replicates: int) -> None:
        self.n = self.skipped = self.follow = self.null = self.baseline = self.correct = self.flips = 0
        # w_pairs: sum of w (u_donor + u_null); w_excess: the same weights times the paired difference (-1, 0 or 1).
        self.w_pairs, self.w_excess, self.w_donor, self.w_correct = (np.zeros(replicates, dtype=np.int64) for _ in range(4))

    def update(
        self,
        *,
        swapped: np.ndarray,
        target: np.ndarray,
        prediction: np.ndarray,
        null: np.ndarray,
        full: np.ndarray,
        labels: np.ndarray,
        weights: np.ndarray,
        donor_weights: np.ndarray,
        null_weights: np.ndarray,
    ) -> None:
        """swapped: rows with a donor and a null donor; target: [B, C] bool, the classes that count as following the
        donor (F(k_j) for the bias swap, its label for the content swap; read on swapped rows); weights, donor_weights,
        null_weights: [B, R] Poisson weights of the sample, its donor and its null donor."""
        self.skipped += int(np.count_nonzero(~swapped))
        p, z, f, t, y = (a[swapped] for a in (prediction, null, full, target, labels))
        w, u, v = weights[swapped], donor_weights[swapped], null_weights[swapped]
        follow, null_follow = follows(p, y, t), follows(z, y, t)
        self.n += int(swapped.sum())
        self.follow += int(np.count_nonzero(follow))
        self.null += int(np.count_nonzero(null_follow))
        self.baseline += int(np.count_nonzero(follows(f, y, t)))
        self.correct += int(np.count_nonzero(p == y))
        self.flips += int(np.count_nonzero(p != f))
        pair, wu = w * (u + v), w * u
        self.w_pairs += pair.sum(axis=0)
        self.w_excess += (follow.astype(np.int64) - null_follow.astype(np.int64)) @ pair
        self.w_donor += wu.sum(axis=0)
        self.w_correct += (p == y).astype(np.int64) @ wu

    def merge(self, other: SwapCounts) -> None:
        for name in ("n", "skipped", "follow", "null", "baseline", "correct", "flips"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("w_pairs", "w_excess", "w_donor", "w_correct"):
            getattr(self, name).__iadd__(getattr(other, name))

    def excess_replicates(self) -> np.ndarray:
        """[R] excess follow rate (fraction) per replicate; NaN for a replicate that drew no swapped sample."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.w_excess / self.w_pairs.astype(np.float64)

    def rates(self, prefix: str) -> dict[str, Any]:
        n = self.n

        def share(count: int) -> float | None:
            return count / n if n else None

        return {
            "n": n,
            "skipped": self.skipped,
            f"{prefix}follow_rate": share(self.follow),
            f"null_{prefix}follow_rate": share(self.null),
            f"baseline_{prefix}follow_rate": share(self.baseline),
            f"excess_{prefix}follow_rate": None if n == 0 else (self.follow - self.null) / n,
            f"excess_{prefix}follow_rate_ci": percentile_interval(self.excess_replicates()) if n else None,
            "accuracy": 100.0 * self.correct / n if n else None,
            "accuracy_ci": percentile_interval(replicate_accuracy(self.w_correct, self.w_donor)) if n else None,
            "flip_rate": share(self.flips),
        }


class CarrierAccumulator:
    def __init__(self, modalities: Sequence[str], *, replicates: int) -> None:
        self.modalities = tuple(modalities)
        self.bias_swap = {m: SwapCounts(replicates) for m in self.modalities}
        self.content_swap = {m: SwapCounts(replicates) for m in self.modalities}

    def merge(self, other: CarrierAccumulator) -> None:
        for m in self.modalities:
            self.bias_swap[m].merge(other.bias_swap[m])
            self.content_swap[m].merge(other.content_swap[m])

    def section(
        self, *, dominant: str | None, bias_source: str, donor_pool: int, note: str | None
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        modalities = {
            m: {"bias_swap": self.bias_swap[m].rates(""), "content_swap": self.content_swap[m].rates("content_")}
            for m in self.modalities
        }
        measured = {m: r["bias_swap"] for m, r in modalities.items() if r["bias_swap"]["excess_follow_rate"] is not None}
        above_zero = [m for m, swap in measured.items() if swap["excess_follow_rate_ci"] and swap["excess_follow_rate_ci"][0] > 0]
        # Ties go to the modality declared first.
        carrier = (
            max(above_zero, key=lambda m: (measured[m]["excess_follow_rate"], -self.modalities.index(m))) if above_zero else None
        )
        if not measured:
            note = " ".join(
                filter(
                    None,
                    [
                        note,
                        "No sample had both a donor of the same label and another bias value and one of the "
                        "same label and bias value, so no modality could be swapped.",
                    ],
                )
            )
        elif carrier is None:
            note = " ".join(
                filter(None, [note, "No modality's excess bias-follow rate has an interval above 0: no carrier is named."])
            )
        derived = {f"bias_follow:{m}": self.bias_swap[m].excess_replicates() for m in self.modalities}
        return (
            {
                "available": bool(measured),
                "note": note,
                "bias_source": bias_source,
                "carrier": carrier,
                "dominant": dominant,
                "differs": bool(carrier and dominant and carrier != dominant),
                "donor_pool": donor_pool,
                "donor_draw": DONOR_DRAW,
                "reference": "null swap",
                "modalities": modalities,
            },
            derived,
        )


def update_swap(
    counts: SwapCounts,
    *,
    donors: np.ndarray,
    null_donors: np.ndarray,
    target: np.ndarray,
    donor_weights: np.ndarray,
    prediction: np.ndarray,
    null: np.ndarray,
    full: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
) -> None:
    """`target` [pool entries, C] bool per pool entry (F(k_j) for the bias swap, the donor's label for the content swap);
    `donor_weights` [pool entries, R] Poisson weights of every pool entry."""
    swapped = (donors >= 0) & (null_donors >= 0)
    per_sample = target[np.maximum(donors, 0)] if len(target) else np.zeros((len(donors), 0), dtype=bool)
    counts.update(
        swapped=swapped,
        target=per_sample,
        prediction=prediction,
        null=null,
        full=full,
        labels=labels,
        weights=weights,
        donor_weights=donor_weights[np.maximum(donors, 0)],
        null_weights=donor_weights[np.maximum(null_donors, 0)],
    )


def targets(pool_bias: np.ndarray, pool_label: np.ndarray, favoured: np.ndarray) -> Mapping[str, np.ndarray]:
    """Per pool entry, [P, C] bool: the classes its bias value favours (none for a value unseen in train), and its label."""
    num_classes = favoured.shape[1]
    bias_target = np.zeros((len(pool_bias), num_classes), dtype=bool)
    known = pool_bias < len(favoured)
    bias_target[known] = favoured[pool_bias[known]]
    content_target = np.zeros((len(pool_label), num_classes), dtype=bool)
    content_target[np.arange(len(pool_label)), pool_label] = True
    return {"bias": bias_target, "content": content_target}
