"""The verdict of a before/after comparison: "less biased" or "bias increased" only from bias measures; the Gap
change is reported as reliance, with why it moved."""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from biasaudit.verdict.words import JSD_NAMES, change, ci_pct, ci_points, number, pct, pts


class _Evidence:
    """One bias measure's change: which way it points and whether a paired interval backs it."""

    def __init__(self, what: str, figure: str, delta: float | None, ci: Any, *, higher_is_better: bool) -> None:
        self.what, self.figure, self.backed = what, figure, bool(ci)
        up, down = (ci[0] > 0, ci[1] < 0) if ci else ((delta or 0) > 0, (delta or 0) < 0)
        self.direction = (
            ("better" if up else "worse" if down else "same")
            if higher_is_better
            else ("better" if down else "worse" if up else "same")
        )


def _evidence(comparison: Mapping[str, Any]) -> list[_Evidence]:
    bias = comparison.get("bias") or {}
    out = []
    for key, what in (("worst_group", "worst-group accuracy"), ("bias_balanced", "bias-balanced accuracy")):
        entry = (bias.get(key) or {}).get("full")
        if entry and entry.get("delta") is not None:
            at_minimum = entry.get("groups_at_minimum") or {}
            tied = at_minimum.get("before"), at_minimum.get("after")
            ties = f"; groups at that minimum {tied[0]} -> {tied[1]}" if None not in tied and tied != (1, 1) else ""
            out.append(
                _Evidence(
                    what,
                    f"{what} {pts(entry['before'])} -> {pts(entry['after'])}% (change {change(entry['delta'])}"
                    f"{ci_points(entry.get('delta_ci'))}{ties})",
                    entry["delta"],
                    entry.get("delta_ci"),
                    higher_is_better=True,
                )
            )
    ood = bias.get("ood")
    if ood and ood.get("delta") is not None:
        out.append(
            _Evidence(
                "OOD accuracy",
                f"OOD accuracy {pts(ood['before'])} -> {pts(ood['after'])}% (change {change(ood['delta'])}"
                f"{ci_points(ood.get('delta_ci'))})",
                ood["delta"],
                ood.get("delta_ci"),
                higher_is_better=True,
            )
        )
    for m, entry in (bias.get("bias_follow") or {}).items():
        if entry and entry.get("delta") is not None:
            what = f"{m} bias-follow rate"
            out.append(
                _Evidence(
                    what,
                    f"{what} {pct(entry['before'])} -> {pct(entry['after'])} (change {change(entry['delta'], scale=100)}"
                    f"{ci_pct(entry.get('delta_ci'))} points)",
                    entry["delta"],
                    entry.get("delta_ci"),
                    higher_is_better=False,
                )
            )
    jsd = comparison.get("jsd") or {}
    for stat in JSD_NAMES:
        entry = jsd.get(stat) or {}
        if entry.get("before") is not None and entry.get("after") is not None:
            delta = entry["after"] - entry["before"]
            out.append(
                _Evidence(
                    f"JSD {JSD_NAMES[stat]}",
                    f"JSD {JSD_NAMES[stat]} {number(entry['before'], 3)} -> {number(entry['after'], 3)} (no interval)",
                    delta,
                    None,
                    higher_is_better=True,
                )
            )
            break  # the weighted mean when both audits have it: it needs no minimum of mistakes per bias value
    return out


def _bias_judgement(evidence: list[_Evidence]) -> tuple[str, list[_Evidence]]:
    """The bias word and the evidence it rests on. Changes backed by a paired interval outrank plain differences:
    when any measure has an interval, only those decide (a JSD without interval cannot overturn them); plain
    differences decide only when no measure has one, and the word says so."""
    if not evidence:
        return "bias not measured (no group, carrier or JSD figures)", []
    backed = any(e.backed for e in evidence)
    pool = [e for e in evidence if e.direction != "same" and (e.backed or not backed)]
    better = [e for e in pool if e.direction == "better"]
    worse = [e for e in pool if e.direction == "worse"]
    plain = "" if backed else " (plain differences, no intervals)"
    if better and worse:
        return (
            f"mixed evidence on bias{plain}: better {', '.join(e.what for e in better)}, worse {', '.join(e.what for e in worse)}"
        ), pool
    if better:
        return f"less biased{plain}", pool
    if worse:
        return f"bias increased{plain}", pool
    return "no clear change in bias", pool


def _judge(delta: float | None, interval: Any, *, lower: str, higher: str, same: str) -> str:
    """One phrase for a change: by its paired 95% interval when there is one, else by the plain difference, said so."""
    if delta is None:
        return same
    if interval:
        return lower if interval[1] < 0 else higher if interval[0] > 0 else same
    word = lower if delta < 0 else higher if delta > 0 else same
    return f"{word} (plain difference, no interval)"


def _alone_scores(comparison: Mapping[str, Any]) -> dict[str, tuple[float, float]] | None:
    """modality -> (before, after) accuracy with every other modality muted; two modalities only."""
    muted = {
        row["name"].split(":", 1)[1]: (row["before"], row["after"])
        for row in comparison.get("conditions") or []
        if row["name"].startswith("missing:") and row["before"] is not None and row["after"] is not None
    }
    if len(muted) != 2:
        return None
    a, b = muted
    return {a: muted[b], b: muted[a]}


def _gap_reason(comparison: Mapping[str, Any], word: str) -> str | None:
    """Why the Gap moved: which modality alone gained, read against the ceilings; the Gap is reliance, not bias."""
    gap = ((comparison.get("summary") or {}).get("missing") or {}).get("gap")
    if not gap or gap.get("delta") is None or gap["delta"] == 0:
        return None
    grew = gap["delta"] > 0
    interval = gap.get("delta_ci")
    if interval and interval[0] <= 0 <= interval[1]:  # no change to explain: a cause for noise would mislead
        return (
            f"The missing-modality Gap did not clearly move ({pts(gap['before'])} -> {pts(gap['after'])} points, change "
            f"{change(gap['delta'])}{ci_points(interval)}). The Gap measures reliance, not bias."
        )
    text = (
        f"The missing-modality Gap {'grew' if grew else 'narrowed'} from {pts(gap['before'])} to {pts(gap['after'])} points "
        f"(change {change(gap['delta'])}{ci_points(gap.get('delta_ci'))})"
    )
    alone = _alone_scores(comparison)
    if alone:
        moved = max(alone, key=lambda m: abs(alone[m][1] - alone[m][0]))  # the modality whose use changed most
        text += f" because {moved} is now used {'more' if alone[moved][1] > alone[moved][0] else 'less'}: " + ", ".join(
            f"{m} alone scores {pts(a)}% (was {pts(b)}%)" for m, (b, a) in alone.items()
        )
    ceilings = (comparison.get("bias") or {}).get("ceilings") or {}
    # A caveated ceiling bounds nothing (diagnostics/ceilings.py): it is not quoted as what a modality can tell.
    each = ", ".join(
        f"{m} {pts((v.get('ceiling') or {}).get('after'))}%"
        for m, v in (ceilings.get("modalities") or {}).items()
        if (v.get("ceiling") or {}).get("after") is not None and not (v.get("caveat") or {}).get("after")
    )
    implied = (ceilings.get("implied_gap") or {}).get("after")
    if each:
        text += f"; the ceilings (what each modality can tell alone, after) are {each}"
        if implied is not None:
            text += f", implying a Gap of {pts(implied)} points"
        if (ceilings.get("large_gap_expected") or {}).get("after"):
            text += ", so a large Gap is expected"
    text += ". The Gap measures reliance, not bias"
    if word.startswith("less biased") and grew:
        text += ": the bias measures above say the model is less biased although its Gap grew"
    elif word.startswith(("bias increased", "no clear")) and not grew:
        text += ": a narrower Gap alone does not mean less bias"
    return text + "."


def _headline_figures(comparison: Mapping[str, Any], evidence: list[_Evidence], pool: list[_Evidence]) -> list[str]:
    bias = comparison.get("bias") or {}
    carriers = {c for c in ((bias.get("carrier") or {}).get("before"), (bias.get("carrier") or {}).get("after")) if c}
    keep = [
        e
        for e in evidence
        if e in pool
        or (e.backed and (e.what.startswith("worst-group") or any(e.what == f"{c} bias-follow rate" for c in carriers)))
    ]
    # OOD accuracy is the Full accuracy of this split, which the headline quotes anyway (as "Full (OOD) accuracy").
    return [e.figure.split(" (change")[0] for e in keep if e.what != "OOD accuracy"]


def _compare_parts(comparison: Mapping[str, Any]) -> tuple[str, list[str]]:
    summary = comparison["summary"]
    evidence = _evidence(comparison)
    word, pool = _bias_judgement(evidence)
    figures, words = _headline_figures(comparison, evidence, pool), [word]
    missing = summary.get("missing")
    if missing:
        gap = missing["gap"]
        figures.append(f"missing-modality Gap {pts(gap['before'])} -> {pts(gap['after'])} points")
        gap_word = _judge(gap["delta"], gap.get("delta_ci"), lower="Gap narrowed", higher="Gap widened", same="Gap unchanged")
        if gap_word.startswith(("Gap widened", "Gap narrowed")):
            plain = "; plain difference, no interval" if "plain difference" in gap_word else ""
            gap_word = f"{gap_word.split(' (')[0]} (reliance, not bias{plain})"
        words.append(gap_word)
        dominant = missing.get("dominant") or {}
        if dominant.get("before") and dominant.get("after") and dominant["before"] != dominant["after"]:
            # Overshooting: the model now leans on the other modality, which a smaller Gap alone does not say.
            words.append(f"the model now leans on {dominant['after']} instead of {dominant['before']}")
    carrier = (comparison.get("bias") or {}).get("carrier") or {}
    if carrier.get("before") and carrier.get("after") and carrier["before"] != carrier["after"]:
        words.append(f"the shortcut moved from {carrier['before']} to {carrier['after']}")
    full = summary["full"]
    ood = "Full (OOD) accuracy" if (comparison.get("bias") or {}).get("ood") else "Full accuracy"
    figures.append(f"{ood} {pts(full['before'])} -> {pts(full['after'])}")
    lost = f"{number(-full['delta'])} points of accuracy lost" if full["delta"] is not None else ""
    accuracy = _judge(full["delta"], full.get("delta_ci"), lower=lost, higher="accuracy gained", same="no clear accuracy change")
    words.append(accuracy)
    noisy = (summary.get("noisy") or {}).get("gap")
    if noisy and _judge(noisy["delta"], noisy.get("delta_ci"), lower="", higher="up", same="") == "up":
        # A rise is bad: "but" only against a good change before it (accuracy gained, or less bias with accuracy unchanged);
        # after a loss or nothing good, "but" would read as if the loss were good news.
        good = accuracy.startswith("accuracy gained") or (accuracy.startswith("no clear") and word.startswith("less biased"))
        words.append(f"{'but' if good else 'and'} the noisy-input Gap rose {pts(noisy['before'])} -> {pts(noisy['after'])}")
    headline = ", ".join(figures) + ": " + ", ".join(words) + "."
    # Capitalised, except where the sentence opens with a modality's name: that is an identifier.
    sentences = [
        (e.figure if e.what.endswith("bias-follow rate") else e.figure[0].upper() + e.figure[1:]) + "." for e in evidence
    ]
    reason = _gap_reason(comparison, word)
    if reason:
        sentences.append(reason)
    if not comparison.get("paired", True):
        sentences.append(
            f"The audits do not pair ({comparison.get('unpaired_reason')}): changes are plain differences without intervals."
        )
    return headline, sentences


def compare_verdict(comparison: Mapping[str, Any]) -> str:
    """One line, e.g. "worst-group accuracy 12.5 -> 30.0%, text bias-follow rate 66% -> 20%, missing-modality Gap
    22.2 -> 30.1 points, Full accuracy 31.2 -> 40.0: less biased, Gap widened (reliance, not bias), accuracy gained."
    "bias increased" and "less biased" come from bias measures only, never from the Gap."""
    return _compare_parts(comparison)[0]


def compare_sentences(comparison: Mapping[str, Any]) -> list[str]:
    """The figures behind the verdict, one sentence each, and why the Gap moved."""
    return _compare_parts(comparison)[1]
