"""The measures a leaderboard compares, read from two after-audits of the same seed (a method's and the control's):
each measure's value in both and its paired change, a point and one value per bootstrap replicate.

Both audits of a seed were taken with the same split, conditions and scan seed, so they weigh the same samples with
the same replicate weights (biasaudit.comparing.pair_replicates) and replicate r of the change is replicate r of the
method's audit minus replicate r of the control's: the sampling noise of the change, as `compare` reads it.

Measures (methods.md section 9; all in points, higher or lower better as `BETTER` says):
  full           Full accuracy (condition full)
  worst_group    worst-group accuracy, condition full
  bias_balanced  bias-balanced accuracy (the mean over (label, bias value) groups), condition full
  ood            OOD accuracy: Full accuracy when the audited split is out of distribution (its groups' shift)
  follow_rate    the excess bias-follow rate of the carrier named by the starting model's audit, in points
  gap            the missing-modality Gap (reliance, not bias: reported, never decisive)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Mapping

import numpy as np

from biasaudit.comparing import derived_replicates, group_replicates, pair_replicates
from biasaudit.errors import InputError

BETTER = {
    "full": "higher",
    "worst_group": "higher",
    "bias_balanced": "higher",
    "ood": "higher",
    "follow_rate": "lower",
    "gap": None,
}
LABELS = {
    "full": "Full accuracy",
    "worst_group": "worst-group accuracy",
    "bias_balanced": "bias-balanced accuracy",
    "ood": "OOD accuracy",
    "follow_rate": "bias-follow rate",
    "gap": "missing-modality Gap",
}
BIAS_MEASURES = ("worst_group", "bias_balanced", "ood", "follow_rate")


@dataclass(frozen=True)
class MeasuredChange:
    """One measure of one seed: its value after the control and after the method, and the paired change (points),
    with one value per bootstrap replicate (NaN where a replicate had no value)."""

    control: float | None
    method: float | None
    delta: float | None
    replicates: np.ndarray | None


def is_ood(audit: Mapping[str, Any]) -> bool:
    """The audited split is out of distribution: its bias distribution differs from train's (the audit's groups)."""
    return bool((((audit.get("groups") or {}).get("shift")) or {}).get("ood"))


def measure_names(start: Mapping[str, Any]) -> tuple[str, ...]:
    """The measures a leaderboard reads, given the starting model's audit (OOD accuracy only on an OOD split, the
    follow rate only when that audit names a carrier)."""
    names = ["full", "worst_group", "bias_balanced"]
    if is_ood(start):
        names.append("ood")
    if carrier_of(start) is not None:
        names.append("follow_rate")
    if (start.get("summary") or {}).get("missing"):
        names.append("gap")
    return tuple(names)


def carrier_of(audit: Mapping[str, Any]) -> str | None:
    return (audit.get("carrier") or {}).get("carrier")


def measure_values(audit: Mapping[str, Any], carrier: str | None) -> dict[str, float | None]:
    """One audit's figure of every measure, in points (None where it has none)."""
    summary = audit.get("summary") or {}
    groups = (((audit.get("groups") or {}).get("conditions")) or {}).get("full") or {}
    swap = ((((audit.get("carrier") or {}).get("modalities")) or {}).get(carrier) or {}).get("bias_swap") or {}
    follow = swap.get("excess_follow_rate")
    full = (summary.get("full") or {}).get("accuracy")
    return {
        "full": full,
        "worst_group": groups.get("worst_group"),
        "bias_balanced": groups.get("bias_balanced"),
        "ood": full,
        "follow_rate": None if follow is None else 100.0 * follow,
        "gap": (summary.get("missing") or {}).get("gap"),
    }


def paired_changes(
    control: Mapping[str, Any], method: Mapping[str, Any], *, names: tuple[str, ...], carrier: str | None
) -> dict[str, MeasuredChange]:
    """Each measure's paired change method − control for one seed; InputError when the audits do not pair (they must
    be of the same split, conditions, samples and scan seed)."""
    pairing = pair_replicates(control, method)
    if pairing.counts is None:  # not paired
        raise InputError(
            f"The control's and the method's after-audits of one seed do not pair ({pairing.reason}); a leaderboard "
            "audits every run of a seed with the same split, conditions and seed."
        )
    before, after = pairing.counts
    count = before.replicates
    c_values, m_values = measure_values(control, carrier), measure_values(method, carrier)
    derived = {"worst_group": "worst_group:full", "bias_balanced": "bias_balanced:full", "follow_rate": f"bias_follow:{carrier}"}
    out = {}
    for name in names:
        c, m = c_values[name], m_values[name]
        delta = None if c is None or m is None else m - c
        replicates: np.ndarray | None = None
        if delta is not None:
            if name in ("full", "ood"):
                replicates = after.accuracy("full") - before.accuracy("full")
            elif name == "gap":
                b, a = group_replicates(control, before, "missing"), group_replicates(method, after, "missing")
                replicates = (a.max(axis=0) - a.min(axis=0)) - (b.max(axis=0) - b.min(axis=0))
            else:
                c_reps = derived_replicates(control, derived[name], count, "control")
                m_reps = derived_replicates(method, derived[name], count, "method")
                if c_reps is not None and m_reps is not None:
                    replicates = (m_reps - c_reps) * (100.0 if name == "follow_rate" else 1.0)
        out[name] = MeasuredChange(control=c, method=m, delta=delta, replicates=replicates)
    return out
