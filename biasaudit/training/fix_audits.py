"""What `fix` reads from its before audit (the second split to audit, the modality a discovered bias clusters) and
adds to its comparisons (the second split's change, a from-scratch run's label, the one-run caveat)."""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from biasaudit.data.adapter import Adapter
from biasaudit.verdict.words import change, ci_points, pts

AUTO = "auto"  # also_split's default: chosen from the before audit (resolved_also_split)


def resolved_also_split(also_split: str | None, before: Mapping[str, Any], adapter: Adapter, *, split: str) -> str | None:
    """auto: the in-distribution `test` split when the audited split is out of distribution (the before-audit's groups
    find its bias distribution shifted from train's) and the adapter has one; else none."""
    if also_split != AUTO:
        return also_split
    shifted = bool((((before.get("groups") or {}).get("shift")) or {}).get("ood"))
    return "test" if shifted and split != "test" and "test" in adapter.splits else None


def dominant_of(audit: Mapping[str, Any]) -> str | None:
    """The modality whose absence flips the most predictions (None when nothing flips or no missing group ran)."""
    return (audit.get("summary", {}).get("missing") or {}).get("dominant")


def carrier_of(audit: Mapping[str, Any]) -> str | None:
    """The modality whose bias swap moves predictions most (None when the carrier test did not run or found none)."""
    return (audit.get("summary") or {}).get("carrier")


# Seeds are not optional: the do-nothing ce control fine-tuned with seeds 0, 1, 2 gave three confident, opposite
# verdicts on one model. A fix's intervals are those of the audited samples only.
ONE_RUN = (
    "These intervals cover the audited samples, not training randomness: they are about this one trained model. To "
    "choose a method, compare methods over seeds against the ce control with `biasaudit leaderboard`."
)
FROM_SCRATCH = "build_model()'s initial weights drawn with the run seed (--from-scratch); the before-audit is the checkpoint's"


def with_also_split(comparison: dict[str, Any], also: Mapping[str, Any]) -> dict[str, Any]:
    """The main comparison with the second split's: its section (`also_split`), its Full accuracy change in the verdict
    line, and its verdict as a sentence."""
    full = also["summary"]["full"]
    line = (
        f"on {also['split']}: Full accuracy {pts(full['before'])} -> {pts(full['after'])} "
        f"(change {change(full['delta'])}{ci_points(full.get('delta_ci'))})"
    )
    return {
        **comparison,
        "verdict": f"{comparison['verdict']} Also {line}.",
        "verdict_sentences": [*comparison["verdict_sentences"], f"Also audited {line}; there: {also['verdict']}"],
        "also_split": {
            "split": also["split"],
            "full": full,
            "verdict": also["verdict"],
            "verdict_sentences": also["verdict_sentences"],
            "bias": also["bias"],
        },
    }


def from_scratch_labelled(comparison: dict[str, Any]) -> dict[str, Any]:
    """A from-scratch run's comparison: before is the starting checkpoint, not the weights this training started from."""
    said = (
        "Before is the checkpoint given to fix, not this training's start: the fixed model was trained from build_model()'s "
        "initial weights (--from-scratch), so the changes compare two trainings, not one model before and after a fix."
    )
    return {
        **comparison,
        "before_is": "the starting checkpoint (the fixed model was trained from scratch)",
        "verdict": f"from scratch, against the starting checkpoint: {comparison['verdict']}",
        "verdict_sentences": [said, *comparison["verdict_sentences"]],
    }
