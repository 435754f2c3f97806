"""The verdicts of scan and compare in words, bias measures first (methods.md section 9).

Why this order: flip rates and the Gap measure *reliance*, not bias. A model can need the image (muting
it flips most predictions) while its shortcut runs through the caption, and a de-biased model that uses
the more informative modality better has a *larger* Gap. So a verdict leads with what measures bias
(the carrier's excess bias-follow rate, worst-group and bias-balanced accuracy, OOD accuracy, JSD),
then gives reliance (dominant modality, Gap read against the unimodal ceilings) as context, then the
caveats. Every sentence quotes the number it rests on, with its interval where the audit has one.
Any section may be absent (audits written before it existed) or `{"available": false, "note": ...}`.
"""

from __future__ import annotations

from typing import Any, Mapping

JSD_NAMES = {"weighted_mean": "weighted mean", "mean": "mean"}


def _section(audit: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The section when it exists and ran; None otherwise."""
    section = audit.get(key)
    return section if isinstance(section, Mapping) and section.get("available", True) else None


def _num(value: float) -> str:
    """One decimal, without a trailing .0: 58.0 -> '58', 0.4 -> '0.4'."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def pts(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def ci_points(ci: Any) -> str:
    """' [lo, hi]' of an interval in points; '' when there is none."""
    return f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci and None not in tuple(ci) else ""


def pct(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{_num(100 * fraction)}%"


def ci_pct(ci: Any) -> str:
    """' [lo, hi]' of an interval of fractions, in percent."""
    return f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci and None not in tuple(ci) else ""


# --- scan ---------------------------------------------------------------------------------------------

def _carrier_figures(audit: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    carrier = _section(audit, "carrier")
    name = carrier.get("carrier") if carrier else None
    swap = ((carrier or {}).get("modalities") or {}).get(name, {}).get("bias_swap") if name else None
    return (name, swap) if swap and swap.get("excess_follow_rate") is not None else None


def _swap_clause(swap: Mapping[str, Any]) -> str:
    return (f"makes {pct(swap['excess_follow_rate'])}{ci_pct(swap.get('excess_follow_rate_ci'))} more predictions follow "
            "that bias value than without the swap")


def _bias_sentences(audit: Mapping[str, Any]) -> list[str]:
    out = []
    carrier = audit.get("carrier")
    found = _carrier_figures(audit)
    if found:
        name, swap = found
        kmeans = " (bias values discovered by k-means)" if carrier.get("bias_source") == "kmeans" else ""
        out.append(f"The bias runs through {name}{kmeans}: swapping its input for a donor's with the same label and another "
                   f"bias value {_swap_clause(swap)} ({pct(swap.get('follow_rate'))} vs {pct(swap.get('baseline_follow_rate'))}).")
    elif _section(audit, "carrier") and carrier.get("carrier") is None:
        rates = ", ".join(f"{m} {pct((v.get('bias_swap') or {}).get('excess_follow_rate'))}"
                          for m, v in (carrier.get("modalities") or {}).items())
        out.append(f"No modality carries the bias: swapping a modality's input for one with another bias value makes no more "
                   f"predictions follow that bias value (excess bias-follow rates: {rates or 'none measured'}).")
    elif isinstance(carrier, Mapping) and carrier.get("note"):
        out.append(f"No carrier test: {carrier['note']}")
    groups = _section(audit, "groups")
    full = ((groups or {}).get("conditions") or {}).get("full") or {}
    if full.get("worst_group") is not None:
        where = f" (group {full['worst_group_label']})" if full.get("worst_group_label") else ""
        text = f"Worst-group accuracy is {pts(full['worst_group'])}%{ci_points(full.get('worst_group_ci'))}{where}"
        if full.get("bias_balanced") is not None:
            text += (f"; bias-balanced accuracy {pts(full['bias_balanced'])}%{ci_points(full.get('bias_balanced_ci'))}"
                     f" over {full.get('groups_counted', 'the')} groups")
        if full.get("conflicting_accuracy") is not None and full.get("aligned_accuracy") is not None:
            text += (f"; bias-conflicting samples score {pts(full['conflicting_accuracy'])}% vs "
                     f"{pts(full['aligned_accuracy'])}% for bias-aligned ones")
        out.append(text + ".")
    elif isinstance(audit.get("groups"), Mapping) and audit["groups"].get("note"):
        out.append(f"No group accuracies: {audit['groups']['note']}")
    shift = (groups or {}).get("shift") or {}
    if shift.get("ood"):
        summary_full = (audit.get("summary") or {}).get("full") or {}
        out.append(f"This split is out of distribution for the bias (bias-aligned share {pct(shift.get('split_aligned_share'))} vs "
                   f"{pct(shift.get('train_aligned_share'))} in train), so Full accuracy, {pts(summary_full.get('accuracy'))}%"
                   f"{ci_points(summary_full.get('accuracy_ci'))}, is the OOD accuracy.")
    jsd = jsd_sentence(audit)
    if jsd:
        out.append(jsd)
    return out


def _mistakes(audit: Mapping[str, Any]) -> int | None:
    """Wrong Full predictions counted by the JSD (None when the audit does not say)."""
    per_bias = (audit.get("jsd") or {}).get("per_bias")
    rows = per_bias.values() if isinstance(per_bias, Mapping) else per_bias if isinstance(per_bias, list) else None
    if rows is None:
        return None
    return sum(int(row.get("n_wrong") or 0) for row in rows if isinstance(row, Mapping))


def jsd_sentence(audit: Mapping[str, Any]) -> str | None:
    """The JSD in one sentence, including why a mean is missing (no mistakes at all, or too few per bias value)."""
    jsd = audit.get("jsd")
    if not isinstance(jsd, Mapping):
        return None
    if not jsd.get("available"):
        return f"No JSD: {jsd['note']}" if jsd.get("note") else None
    weighted, mean = jsd.get("weighted_mean"), jsd.get("mean")
    full = ((audit.get("summary") or {}).get("full") or {}).get("accuracy")
    if weighted is None and mean is None and (_mistakes(audit) == 0 or full == 100.0):
        return ("JSD: no mistakes on this split (Full accuracy "
                f"{pts(full)}%), so there is nothing to measure whether mistakes copy the bias.")
    if weighted is None and mean is None:
        return "JSD: no bias value with mistakes has a training prior, so there is no JSD to report."
    parts = [f"weighted mean {weighted:.3f}" if weighted is not None else None,
             f"mean {mean:.3f}" if mean is not None else
             f"mean n/a (no bias value has {jsd.get('min_wrong', 'enough')} mistakes)"]
    return (f"JSD of the mistakes against the bias prior: {', '.join(p for p in parts if p)} (0 = the mistakes follow the bias "
            "prior exactly, 1 = not at all).")


def _reliance_sentences(audit: Mapping[str, Any]) -> list[str]:
    missing = (audit.get("summary") or {}).get("missing")
    if not missing:
        return []
    rates, dominant, scores = missing.get("flip_rates") or {}, missing.get("dominant"), missing.get("scores") or {}
    out = []
    if dominant in rates:
        others = ", ".join(f"{pct(r)} for {m}" for m, r in rates.items() if m != dominant)
        out.append(f"Reliance: the model relies most on {dominant} (muting it flips {pct(rates[dominant])} of predictions"
                   f"{', vs ' + others if others else ''}).")
    elif rates:
        out.append(f"Reliance: no single modality dominates (muting flips {', '.join(f'{pct(r)} for {m}' for m, r in rates.items())}).")
    muted = ", ".join(f"{pts(v)}% with {m} muted" for m, v in scores.items())
    out.append(f"The missing-modality Gap is {pts(missing.get('gap'))} points{ci_points(missing.get('gap_ci'))}"
               f"{' (' + muted + ')' if muted else ''}.")
    ceilings = _section(audit, "ceilings")
    modalities = (ceilings or {}).get("modalities") or {}
    if modalities:
        each = ", ".join(f"{m} {pts(v.get('ceiling'))}%{ci_points(v.get('ceiling_ci'))}" for m, v in modalities.items())
        text = (f"Unimodal ceilings (what each modality can tell alone): {each}; they alone imply a Gap of "
                f"{pts(ceilings.get('implied_gap'))} points")
        if ceilings.get("large_gap_expected"):
            text += (", so a large Gap is expected: the modalities can tell different amounts, and a large Gap need not "
                     "mean bias")
        out.append(text + ".")
        used = ", ".join(f"{m} {pct(v['utilisation'])}" for m, v in modalities.items() if v.get("utilisation") is not None)
        if used:
            out.append(f"Utilisation (accuracy alone / ceiling): {used}.")
    elif isinstance(audit.get("ceilings"), Mapping) and audit["ceilings"].get("note"):
        out.append(f"No unimodal ceilings: {audit['ceilings']['note']}")
    return out


def _caveat_sentences(audit: Mapping[str, Any]) -> list[str]:
    out = []
    dominant = ((audit.get("summary") or {}).get("missing") or {}).get("dominant")
    for finding in ((audit.get("mute_checks") or {}).get("findings") or []):
        m = finding.get("modality")
        if finding.get("kind") == "degenerate":
            text = (f"Caveat: muting {m} sends {pct(finding.get('share'))} of samples to class "
                    f"{finding.get('top_class_name', finding.get('top_class'))}, so its flip rate partly measures the mute value")
        else:
            text = (f"Caveat: the muted {m} lies far outside the data (RMS z {_num(finding.get('distance') or 0.0)} of its branch "
                    "embedding), so its flip rate partly measures the mute value")
        if m == dominant:
            text += f"; {m} is reported dominant with that caveat"
        out.append(f"{text}; try --mute {m}=mean.")
    compared = (audit.get("mute_checks") or {}).get("compare") or {}
    for m, entry in compared.items():
        named = entry.get("dominant") or {}
        if len(set(named.values())) > 1:
            out.append(f"The dominant modality depends on what muting {m} means: "
                       + ", ".join(f"{d} with --mute {m}={choice}" for choice, d in named.items()) + ".")
    found = _carrier_figures(audit)
    rates = ((audit.get("summary") or {}).get("missing") or {}).get("flip_rates") or {}
    if found and dominant in rates and found[0] != dominant:
        name, swap = found
        out.append(f"The model relies most on {dominant} (muting it flips {pct(rates[dominant])} of predictions) but the shortcut "
                   f"runs through {name} (swapping {name}'s bias value {_swap_clause(swap)}): a fix aimed at {dominant} would "
                   "miss it.")
    if "groups" not in audit and "carrier" not in audit:
        out.append("This audit has no group or carrier measures (written by an older biasaudit); scan again for them.")
    return out


def _headline(audit: Mapping[str, Any]) -> str:
    parts = []
    found = _carrier_figures(audit)
    if found:
        name, swap = found
        parts.append(f"the bias runs through {name} (excess bias-follow rate {pct(swap['excess_follow_rate'])}"
                     f"{ci_pct(swap.get('excess_follow_rate_ci'))})")
    elif _section(audit, "carrier") and audit["carrier"].get("carrier") is None:
        parts.append("no modality carries the bias")
    full = ((_section(audit, "groups") or {}).get("conditions") or {}).get("full") or {}
    if full.get("worst_group") is not None:
        parts.append(f"worst-group accuracy {pts(full['worst_group'])}%{ci_points(full.get('worst_group_ci'))}")
    if ((_section(audit, "groups") or {}).get("shift") or {}).get("ood"):
        parts.append(f"OOD accuracy {pts(((audit.get('summary') or {}).get('full') or {}).get('accuracy'))}%")
    missing = (audit.get("summary") or {}).get("missing") or {}
    if missing.get("dominant"):
        parts.append(f"the model relies most on {missing['dominant']} (missing-modality Gap {pts(missing.get('gap'))} points"
                     f"{ci_points(missing.get('gap_ci'))})")
    elif missing:
        parts.append(f"no single modality dominates the model (missing-modality Gap {pts(missing.get('gap'))} points)")
    if not parts:
        return "No verdict: the audit has neither bias measures nor a missing-modality Gap."
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def scan_verdict(audit: Mapping[str, Any]) -> dict[str, Any]:
    """{"headline": one line, "sentences": bias measures, then reliance, then caveats}."""
    return {"headline": _headline(audit),
            "sentences": _bias_sentences(audit) + _reliance_sentences(audit) + _caveat_sentences(audit)}


# --- compare ------------------------------------------------------------------------------------------

class _Evidence:
    """One bias measure's change: which way it points and whether a paired interval backs it."""

    def __init__(self, what: str, figure: str, delta: float | None, ci: Any, *, higher_is_better: bool) -> None:
        self.what, self.figure, self.backed = what, figure, bool(ci)
        up, down = (ci[0] > 0, ci[1] < 0) if ci else ((delta or 0) > 0, (delta or 0) < 0)
        self.direction = ("better" if up else "worse" if down else "same") if higher_is_better else \
            ("better" if down else "worse" if up else "same")


def _evidence(comparison: Mapping[str, Any]) -> list[_Evidence]:
    bias = comparison.get("bias") or {}
    out = []
    for key, what in (("worst_group", "worst-group accuracy"), ("bias_balanced", "bias-balanced accuracy")):
        entry = (bias.get(key) or {}).get("full")
        if entry and entry.get("delta") is not None:
            out.append(_Evidence(what, f"{what} {pts(entry['before'])} -> {pts(entry['after'])}% (change {entry['delta']:+.1f}"
                                       f"{ci_points(entry.get('delta_ci'))})", entry["delta"], entry.get("delta_ci"), higher_is_better=True))
    ood = bias.get("ood")
    if ood and ood.get("delta") is not None:
        out.append(_Evidence("OOD accuracy", f"OOD accuracy {pts(ood['before'])} -> {pts(ood['after'])}% (change {ood['delta']:+.1f}"
                                             f"{ci_points(ood.get('delta_ci'))})", ood["delta"], ood.get("delta_ci"), higher_is_better=True))
    for m, entry in (bias.get("bias_follow") or {}).items():
        if entry and entry.get("delta") is not None:
            what = f"{m} bias-follow rate"
            out.append(_Evidence(what, f"{what} {pct(entry['before'])} -> {pct(entry['after'])} (change {100 * entry['delta']:+.1f}"
                                       f"{ci_pct(entry.get('delta_ci'))} points)", entry["delta"], entry.get("delta_ci"), higher_is_better=False))
    jsd = comparison.get("jsd") or {}
    for stat in JSD_NAMES:
        entry = jsd.get(stat) or {}
        if entry.get("before") is not None and entry.get("after") is not None:
            delta = entry["after"] - entry["before"]
            out.append(_Evidence(f"JSD {JSD_NAMES[stat]}", f"JSD {JSD_NAMES[stat]} {entry['before']:.3f} -> {entry['after']:.3f} "
                                 "(no interval)", delta, None, higher_is_better=True))
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
        return (f"mixed evidence on bias{plain}: better {', '.join(e.what for e in better)}, "
                f"worse {', '.join(e.what for e in worse)}"), pool
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
    muted = {row["name"].split(":", 1)[1]: (row["before"], row["after"]) for row in comparison.get("conditions") or []
             if row["name"].startswith("missing:") and row["before"] is not None and row["after"] is not None}
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
    text = (f"The missing-modality Gap {'grew' if grew else 'narrowed'} from {pts(gap['before'])} to {pts(gap['after'])} points "
            f"(change {gap['delta']:+.1f}{ci_points(gap.get('delta_ci'))})")
    alone = _alone_scores(comparison)
    if alone:
        moved = max(alone, key=lambda m: abs(alone[m][1] - alone[m][0]))  # the modality whose use changed most
        text += (f" because {moved} is now used {'more' if alone[moved][1] > alone[moved][0] else 'less'}: "
                 + ", ".join(f"{m} alone scores {pts(a)}% (was {pts(b)}%)" for m, (b, a) in alone.items()))
    ceilings = ((comparison.get("bias") or {}).get("ceilings") or {})
    each = ", ".join(f"{m} {pts((v.get('ceiling') or {}).get('after'))}%" for m, v in (ceilings.get("modalities") or {}).items()
                     if (v.get("ceiling") or {}).get("after") is not None)
    if each:
        text += (f"; the ceilings (what each modality can tell alone, after) are {each}, implying a Gap of "
                 f"{pts((ceilings.get('implied_gap') or {}).get('after'))} points")
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
    keep = [e for e in evidence if e in pool or (e.backed and (e.what.startswith("worst-group") or
                                                               any(e.what == f"{c} bias-follow rate" for c in carriers)))]
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
    lost = f"{-full['delta']:.1f} points of accuracy lost" if full["delta"] is not None else ""
    words.append(_judge(full["delta"], full.get("delta_ci"), lower=lost, higher="accuracy gained", same="no clear accuracy change"))
    noisy = (summary.get("noisy") or {}).get("gap")
    if noisy and _judge(noisy["delta"], noisy.get("delta_ci"), lower="", higher="up", same="") == "up":
        words.append(f"but the noisy-input Gap rose {pts(noisy['before'])} -> {pts(noisy['after'])}")
    headline = ", ".join(figures) + ": " + ", ".join(words) + "."
    # Capitalised, except where the sentence opens with a modality's name: that is an identifier.
    sentences = [(e.figure if e.what.endswith("bias-follow rate") else e.figure[0].upper() + e.figure[1:]) + "." for e in evidence]
    reason = _gap_reason(comparison, word)
    if reason:
        sentences.append(reason)
    if not comparison.get("paired", True):
        sentences.append(f"The audits do not pair ({comparison.get('unpaired_reason')}): changes are plain differences without intervals.")
    return headline, sentences


def compare_verdict(comparison: Mapping[str, Any]) -> str:
    """One line, e.g. "worst-group accuracy 12.5 -> 30.0%, text bias-follow rate 66% -> 20%, missing-modality Gap
    22.2 -> 30.1 points, Full accuracy 31.2 -> 40.0: less biased, Gap widened (reliance, not bias), accuracy gained."
    "bias increased" and "less biased" come from bias measures only, never from the Gap."""
    return _compare_parts(comparison)[0]


def compare_sentences(comparison: Mapping[str, Any]) -> list[str]:
    """The figures behind the verdict, one sentence each, and why the Gap moved."""
    return _compare_parts(comparison)[1]
