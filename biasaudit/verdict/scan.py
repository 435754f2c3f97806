"""The verdict of one audit: bias measures first, then reliance against the ceilings, then caveats."""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping

from biasaudit.verdict.words import number, one_decimal, ran_section, ci_pct, ci_points, pct, pts


def _carrier_figures(audit: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    carrier = ran_section(audit, "carrier")
    if not carrier:
        return None
    name = carrier.get("carrier")
    if not name:
        return None
    swap = (carrier.get("modalities") or {}).get(name, {}).get("bias_swap")
    return (name, swap) if swap and swap.get("excess_follow_rate") is not None else None


def _swap_clause(swap: Mapping[str, Any]) -> str:
    return (
        f"makes {pct(swap['excess_follow_rate'])}{ci_pct(swap.get('excess_follow_rate_ci'))} more predictions follow "
        "that bias value than a swap that keeps the bias value"
    )


def _worst_group_phrase(full: Mapping[str, Any], *, named: bool = False) -> str:
    """Worst-group accuracy with the exact (Clopper-Pearson) interval of the worst group's own samples where the audit has
    it: a bootstrap interval of 0 of 11 correct has no width and would read as certainty. named: with the group's name."""
    group = f"group {full['worst_group_label']}; " if named and full.get("worst_group_label") else ""
    exact = full.get("worst_group_exact_ci")
    if exact is None:
        where = f" ({group[:-2]})" if group else ""
        return f"{pts(full['worst_group'])}%{ci_points(full.get('worst_group_ci'))}{where}"
    tied = full.get("groups_at_minimum") or 1
    ties = f"; {tied} groups share this minimum" if tied > 1 else ""
    return f"{pts(full['worst_group'])}% ({group}exact 95% interval{ci_points(exact)}, n={full.get('worst_group_n')}{ties})"


def _blind_phrase(groups: Mapping[str, Any], full: Mapping[str, Any]) -> str:
    return (
        f"bias-conflicting accuracy {pts(full['conflicting_accuracy'])}%{ci_points(full.get('conflicting_accuracy_ci'))} "
        f"(all {groups.get('conflicting_samples')} bias-conflicting samples are in groups below min_group "
        f"{groups.get('min_group')}, "
        f"so there is no worst-group figure for the bias) vs {pts(full.get('aligned_accuracy'))}% aligned"
    )


def _bias_sentences(audit: Mapping[str, Any]) -> list[str]:
    out = []
    carrier = audit.get("carrier")
    ran = ran_section(audit, "carrier")
    found = _carrier_figures(audit)
    if found and ran:  # found implies the carrier section ran
        name, swap = found
        kmeans = " (bias values discovered by k-means)" if ran.get("bias_source") == "kmeans" else ""
        null_rate = swap.get("null_follow_rate", swap.get("baseline_follow_rate"))
        out.append(
            f"The bias runs through {name}{kmeans}: swapping its input for a donor's with the same label and another "
            f"bias value {_swap_clause(swap)} ({pct(swap.get('follow_rate'))} vs {pct(null_rate)})."
        )
    elif ran and ran.get("carrier") is None:
        rates = ", ".join(
            f"{m} {pct((v.get('bias_swap') or {}).get('excess_follow_rate'))}" for m, v in (ran.get("modalities") or {}).items()
        )
        out.append(
            f"No modality is named the carrier: no modality's excess bias-follow rate (a swap to another bias value against "
            f"a swap that keeps it) has a 95% interval above 0 ({rates or 'none measured'})."
        )
    elif isinstance(carrier, Mapping) and carrier.get("note"):
        out.append(f"No carrier test: {carrier['note']}")
    groups = ran_section(audit, "groups") or {}
    full = (groups.get("conditions") or {}).get("full") or {}
    if groups and groups.get("blind") and full.get("conflicting_accuracy") is not None:
        out.append(
            f"Worst-group accuracy cannot see the bias on this split: {groups['blind']}. Bias-conflicting samples score "
            f"{pts(full['conflicting_accuracy'])}%{ci_points(full.get('conflicting_accuracy_ci'))} "
            f"(n={groups.get('conflicting_samples')}) vs {pts(full.get('aligned_accuracy'))}% for bias-aligned ones."
        )
    elif groups and groups.get("blind"):
        out.append(f"Worst-group accuracy cannot see the bias on this split: {groups['blind']}.")
    elif full.get("worst_group") is not None:
        text = f"Worst-group accuracy is {_worst_group_phrase(full, named=True)}"
        if full.get("bias_balanced") is not None:
            text += (
                f"; bias-balanced accuracy {pts(full['bias_balanced'])}%{ci_points(full.get('bias_balanced_ci'))}"
                f" over {full.get('groups_counted', 'the')} groups"
            )
        if full.get("conflicting_accuracy") is not None and full.get("aligned_accuracy") is not None:
            text += (
                f"; bias-conflicting samples score {pts(full['conflicting_accuracy'])}% vs "
                f"{pts(full['aligned_accuracy'])}% for bias-aligned ones"
            )
        left = full.get("uncounted") or {}
        if left.get("n"):
            among = f" ({left['conflicting_n']} of them bias-conflicting)" if left.get("conflicting_n") else ""
            text += (
                f". {left['n']} samples in {left['groups']} groups below min_group {groups.get('min_group')} are left out of it"
                f"{among}; together they score {pts(left.get('accuracy'))}%{ci_points(left.get('accuracy_ci'))}"
            )
        out.append(text + ".")
    elif isinstance(audit.get("groups"), Mapping) and audit["groups"].get("note"):
        out.append(f"No group accuracies: {audit['groups']['note']}")
    shift = groups.get("shift") or {}
    if shift.get("ood"):
        summary_full = (audit.get("summary") or {}).get("full") or {}
        out.append(
            f"This split is out of distribution for the bias (bias-aligned share {pct(shift.get('split_aligned_share'))} vs "
            f"{pct(shift.get('train_aligned_share'))} in train), so Full accuracy, {pts(summary_full.get('accuracy'))}%"
            f"{ci_points(summary_full.get('accuracy_ci'))}, is the OOD accuracy."
        )
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
        return (
            "JSD: no mistakes on this split (Full accuracy "
            f"{pts(full)}%), so there is nothing to measure whether mistakes copy the bias."
        )
    if weighted is None and mean is None:
        return "JSD: no bias value with mistakes has a training prior, so there is no JSD to report."
    parts = [
        f"weighted mean {number(weighted, 3)}" if weighted is not None else None,
        f"mean {number(mean, 3)}"
        if mean is not None
        else f"mean n/a (no bias value has {jsd.get('min_wrong', 'enough')} mistakes)",
    ]
    return (
        f"JSD of the mistakes against the bias prior: {', '.join(p for p in parts if p)} (0 = the mistakes follow the bias "
        "prior exactly, 1 = not at all)."
    )


def _ceiling_sentences(ceilings: Mapping[str, Any], modalities: Mapping[str, Any]) -> list[str]:
    """The ceilings, the Gap they imply and the utilisation. A caveated ceiling bounds nothing: it is marked, the implied
    Gap and the utilisation are read without it (the section computes the Gap so), and its caveat is a sentence."""
    caveats = [v["caveat"] for v in modalities.values() if v.get("caveat")]
    each = ", ".join(
        f"{m} {pts(v.get('ceiling'))}%{ci_points(v.get('ceiling_ci'))}{' (not a bound)' if v.get('caveat') else ''}"
        for m, v in modalities.items()
    )
    text = f"Unimodal ceilings (what each modality can tell alone): {each}"
    if not caveats or ceilings.get("implied_gap") is not None:
        who = "those that are bounds" if caveats else "they alone"
        text += f"; {who} imply a Gap of {pts(ceilings.get('implied_gap'))} points"
        if ceilings.get("large_gap_expected"):
            text += ", so a large Gap is expected: the modalities can tell different amounts, and a large Gap need not mean bias"
    out = [text + ".", *caveats]
    used = ", ".join(
        f"{m} {pct(v['utilisation'])}" for m, v in modalities.items() if v.get("utilisation") is not None and not v.get("caveat")
    )
    if used:
        out.append(f"Utilisation (accuracy alone / ceiling): {used}.")
    return out


def _reliance_sentences(audit: Mapping[str, Any]) -> list[str]:
    missing = (audit.get("summary") or {}).get("missing")
    if not missing:
        return []
    rates, dominant, scores = missing.get("flip_rates") or {}, missing.get("dominant"), missing.get("scores") or {}
    out = []
    if dominant in rates:
        others = ", ".join(f"{pct(r)} for {m}" for m, r in rates.items() if m != dominant)
        out.append(
            f"Reliance: the model relies most on {dominant} (muting it flips {pct(rates[dominant])} of predictions"
            f"{', vs ' + others if others else ''})."
        )
    elif rates:
        out.append(
            f"Reliance: no single modality dominates (muting flips {', '.join(f'{pct(r)} for {m}' for m, r in rates.items())})."
        )
    muted = ", ".join(f"{pts(v)}% with {m} muted" for m, v in scores.items())
    out.append(
        f"The missing-modality Gap is {pts(missing.get('gap'))} points{ci_points(missing.get('gap_ci'))}"
        f"{' (' + muted + ')' if muted else ''}."
    )
    ceilings = ran_section(audit, "ceilings") or {}
    modalities = ceilings.get("modalities") or {}
    if modalities:
        out.extend(_ceiling_sentences(ceilings, modalities))
    elif isinstance(audit.get("ceilings"), Mapping) and audit["ceilings"].get("note"):
        out.append(f"No unimodal ceilings: {audit['ceilings']['note']}")
    return out


def _caveat_sentences(audit: Mapping[str, Any]) -> list[str]:
    out = []
    dominant = ((audit.get("summary") or {}).get("missing") or {}).get("dominant")
    for finding in (audit.get("mute_checks") or {}).get("findings") or []:
        m = finding.get("modality")
        if finding.get("kind") == "degenerate":
            text = (
                f"Caveat: muting {m} sends {pct(finding.get('share'))} of samples to class "
                f"{finding.get('top_class_name', finding.get('top_class'))}, so its flip rate partly measures the mute value"
            )
        else:
            text = (
                f"Caveat: the muted {m} lies far outside the data "
                f"(RMS z {one_decimal(finding.get('distance') or 0.0)} of its branch "
                "embedding), so its flip rate partly measures the mute value"
            )
        if m == dominant:
            text += f"; {m} is reported dominant with that caveat"
        hint = (
            f"try --mute {m}=mean"
            if f"--mute {m}=mean" in (finding.get("message") or "")
            else "check what the model receives for a missing input"
        )
        out.append(f"{text}; {hint}.")
    compared = (audit.get("mute_checks") or {}).get("compare") or {}
    for m, entry in compared.items():
        named = entry.get("dominant") or {}
        if len(set(named.values())) > 1:
            out.append(
                f"The dominant modality depends on what muting {m} means: "
                + ", ".join(f"{d} with --mute {m}={choice}" for choice, d in named.items())
                + "."
            )
    full = ((audit.get("summary") or {}).get("full") or {}).get("accuracy")
    for row in audit.get("conditions") or []:
        if isinstance(row, Mapping) and row.get("group") == "missing" and row.get("negative_transfer"):
            out.append(
                f"Muting {row.get('modality')} raises accuracy from {pts(full)}% (Full) to {pts(row.get('accuracy'))}%"
                f"{ci_points(row.get('accuracy_ci'))}: on this split {row.get('modality')} misleads the model more than it helps "
                "(negative transfer)."
            )
    found = _carrier_figures(audit)
    rates = ((audit.get("summary") or {}).get("missing") or {}).get("flip_rates") or {}
    if found and dominant in rates and found[0] != dominant:
        name, swap = found
        out.append(
            f"The model relies most on {dominant} (muting it flips {pct(rates[dominant])} of predictions) but the shortcut "
            f"runs through {name} (swapping {name}'s bias value {_swap_clause(swap)}): a fix aimed at {dominant} would "
            "miss it."
        )
    if "groups" not in audit and "carrier" not in audit:
        out.append("This audit has no group or carrier measures (written by an older biasaudit); scan again for them.")
    return out


def _headline(audit: Mapping[str, Any]) -> str:
    parts = []
    found = _carrier_figures(audit)
    if found:
        name, swap = found
        parts.append(
            f"the bias runs through {name} (excess bias-follow rate {pct(swap['excess_follow_rate'])}"
            f"{ci_pct(swap.get('excess_follow_rate_ci'))})"
        )
    elif ran_section(audit, "carrier") and audit["carrier"].get("carrier") is None:
        parts.append("no carrier is named")
    groups = ran_section(audit, "groups") or {}
    full = (groups.get("conditions") or {}).get("full") or {}
    if groups.get("blind") and full.get("conflicting_accuracy") is not None:
        parts.append(_blind_phrase(groups, full))
    elif groups.get("blind"):
        parts.append("no bias-conflicting samples on this split, so no worst-group figure for the bias")
    elif full.get("worst_group") is not None:
        parts.append(f"worst-group accuracy {_worst_group_phrase(full)}")
    if ((ran_section(audit, "groups") or {}).get("shift") or {}).get("ood"):
        parts.append(f"OOD accuracy {pts(((audit.get('summary') or {}).get('full') or {}).get('accuracy'))}%")
    missing = (audit.get("summary") or {}).get("missing") or {}
    if missing.get("dominant"):
        parts.append(
            f"the model relies most on {missing['dominant']} (missing-modality Gap {pts(missing.get('gap'))} points"
            f"{ci_points(missing.get('gap_ci'))})"
        )
    elif missing:
        parts.append(f"no single modality dominates the model (missing-modality Gap {pts(missing.get('gap'))} points)")
    if not parts:
        return "No verdict: the audit has neither bias measures nor a missing-modality Gap."
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def scan_verdict(audit: Mapping[str, Any]) -> dict[str, Any]:
    """{"headline": one line, "sentences": bias measures, then reliance, then caveats}."""
    return {
        "headline": _headline(audit),
        "sentences": _bias_sentences(audit) + _reliance_sentences(audit) + _caveat_sentences(audit),
    }
