"""The gate document's `changes` block: the measures that moved most between the baseline and the current audit, for a
pull request's summary ("Largest changes against the baseline").

Every figure is read from the comparison that `biasaudit compare` writes (biasaudit.comparing.compare_audits, methods.md
sections 2 and 9): the value in each audit, the change (current minus baseline) and its paired 95% interval when the
audits pair. Nothing is recomputed here; this module only picks and ranks. The measures ranked are the bias measures
(worst-group and bias-balanced accuracy per condition, each modality's excess bias-follow rate) and every condition's
accuracy. The Gaps are left out on purpose: a Gap is two of these accuracies subtracted, and it grows when a fix makes the
model use its informative modality better (docs/gating.md), so listing it beside them would count one change twice.

Changes rank by their size in points on one scale: a bias-follow rate is a fraction (as in the audits), so its change
is taken in percentage points, as the bias-follow rule's `change_points` is. Ties keep the order above (bias measures
first). A measure that did not move (a change of exactly 0) is no change and is not listed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

LARGEST = 5  # how many changes the block keeps: the summary is a glance, `biasaudit compare` lists every one


def _entry(
    measure: str, kind: str, what: str, unit: str, change: Mapping[str, Any], *, scale: float = 1.0
) -> dict[str, Any] | None:
    """One measure as the block writes it: baseline and current in the measure's own unit, the change and its
    interval in points (scale: 100 for a fraction). None when either audit lacks the figure."""
    if change.get("delta") is None:
        return None
    ci = change.get("delta_ci")
    return {
        "measure": measure,
        "kind": kind,
        "what": what,
        "unit": unit,
        "baseline": change["before"],
        "current": change["after"],
        "change_points": scale * change["delta"],
        "change_ci_points": [scale * ci[0], scale * ci[1]] if ci is not None else None,
    }


def _measures(comparison: Mapping[str, Any]) -> Iterator[dict[str, Any] | None]:
    bias = comparison.get("bias") or {}
    for key, words in (("worst_group", "worst-group accuracy"), ("bias_balanced", "bias-balanced accuracy")):
        for condition, change in (bias.get(key) or {}).items():
            yield _entry(f"{key}[{condition}]", "bias", f"{condition} {words}", "percent", change)
    for modality, change in (bias.get("bias_follow") or {}).items():
        yield _entry(f"bias_follow[{modality}]", "bias", f"{modality} bias-follow rate (excess)", "fraction", change, scale=100.0)
    for row in comparison.get("conditions") or []:
        yield _entry(f"accuracy[{row['name']}]", "accuracy", f"{row['name']} accuracy", "percent", row)


def largest_changes(comparison: Mapping[str, Any], *, largest: int = LARGEST) -> dict[str, Any]:
    """The `changes` block of a gate document from a comparison document (compare_audits(baseline, current)): whether
    the audits pair (and why not), how many measures changed, and the `largest` of them by size, largest first."""
    changed = [e for e in _measures(comparison) if e is not None and e["change_points"] != 0]
    # sorted() is stable: equal sizes keep the bias measures ahead of the accuracies.
    ranked = sorted(changed, key=lambda e: -abs(e["change_points"]))
    return {
        "paired": comparison["paired"],
        "unpaired_reason": comparison["unpaired_reason"],
        "note": None,
        "changed": len(changed),
        "largest": ranked[:largest],
    }


def no_changes(reason: str) -> dict[str, Any]:
    """The block when the audits do not compare (another split, other conditions, ...) and no rule needed them to."""
    return {"paired": None, "unpaired_reason": None, "note": reason, "changed": 0, "largest": []}
