"""Diagnosis before treatment: what the before-audit says about whether a method's mechanism fits this model.

Each method works on one thing (methods.md section 8), as its registry entry says (training/methods.py):
  reliance  balgrad, ogm_ge, mmpareto strengthen the modality the model uses less (or slow the one it uses most);
  bias      mmdb, groupdro, jtt, dfr act on the bias itself ((label, bias value) groups, margins, the error set);
  neither   ce (the control) and dandr (re-learning of overfitted branches) take no side.
A reliance method helps against a shortcut only when the shortcut runs through the modality the model leans on: when
the carrier test finds the bias in another modality than the dominant one, strengthening the under-used modality
strengthens the carrier. Measured on such a model: BalGrad raised the text bias-follow rate by 14.7 points [10.4,
19.0] and lowered OOD accuracy by 7.5. The before-audit already shows this, so `fix` says it before training.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from biasaudit.training.methods import METHODS, acting_on
from biasaudit.verdict.words import change, interval as format_interval


class TreatmentWarning(UserWarning):
    """A method whose mechanism works against the before-audit's diagnosis (raised as a warning, not an error: the
    user may want the comparison anyway)."""


def diagnosis(before: Mapping[str, Any]) -> dict[str, Any]:
    """The figures the warnings read: the carrier (None when the test found none or did not run), the dominant
    modality, and the missing-modality Gap with its interval."""
    carrier_test = before.get("carrier") or {}
    missing = (before.get("summary") or {}).get("missing") or {}
    # The Gap is |A_a - A_b|, whose interval never holds 0; whether one modality is relied on more is read from the
    # signed Gap's (two modalities; with more, the audit has no signed Gap and the rule stays silent).
    return {
        "carrier_test": bool(carrier_test.get("available")),
        "carrier": carrier_test.get("carrier"),
        "dominant": missing.get("dominant"),
        "gap": missing.get("gap"),
        "gap_ci": missing.get("gap_ci"),
        "signed_gap": missing.get("signed_gap"),
        "signed_gap_ci": missing.get("signed_gap_ci"),
    }


def treatment_warnings(method: str, before: Mapping[str, Any]) -> list[str]:
    """One sentence per way `method` works against what `before` found (none when it fits or nothing is known)."""
    found = diagnosis(before)
    acts_on = METHODS[method].acts_on if method in METHODS else None
    carrier, dominant = found["carrier"], found["dominant"]
    warnings = []
    if acts_on == "reliance" and carrier and dominant and carrier != dominant:
        warnings.append(
            f"The before-audit finds the bias carried by {carrier} while the model relies most on {dominant}; {method} "
            f"strengthens the modality the model uses less, here {carrier}, the carrier, so it can make the model more "
            f"biased: methods that act on the bias itself are {', '.join(acting_on('bias'))}."
        )
    gap, interval = found["signed_gap"], found["signed_gap_ci"]
    if acts_on == "reliance" and interval is not None and interval[0] <= 0 <= interval[1]:
        warnings.append(
            f"The before-audit finds no clear reliance on one modality (the signed missing-modality Gap, one "
            f"modality alone minus the other, is {change(gap)} points {format_interval(interval)}), which is "
            f"what {method} rebalances."
        )
    if acts_on == "bias" and found["carrier_test"] and carrier is None:
        warnings.append(
            f"The before-audit's carrier test finds no modality that carries a bias (no excess bias-follow rate "
            f"whose interval lies above 0), "
            f"which is what {method} acts on; compare against --method ce before trusting a change."
        )
    return warnings
