"""Typed views of an audit's bias measures (methods.md section 9) and of its ceilings and calibration: the figures the
project tells users to read first, as frozen dataclasses over audit.json's `groups`, `carrier`, `jsd`, `ceilings`
and `calibration` sections (each None or empty when the scan did not run it; `note` says why when the document does).

    audit.bias.carrier                      the modality that carries the shortcut, or None
    audit.bias.follow_rate["text"]          its excess bias-follow rate (a fraction) with its interval
    audit.bias.worst_group["full"]          worst-group accuracy (percent) of a condition, with its interval
    audit.bias.bias_balanced["full"]        bias-balanced accuracy (percent)
    audit.bias.ood                          True when the split's bias distribution differs from train's
    audit.ceilings.modalities["image"]      what one modality can tell alone
    audit.calibration["missing:image"]      expected calibration error and confidence-rise rate
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from biasaudit.results.estimate import Estimate, Interval, interval_of, number_or_none


@dataclass(frozen=True)
class Uncounted:
    """The groups left out of worst-group and bias-balanced accuracy (under min_group samples), together: `groups`,
    `n` samples, `conflicting_n` of them bias-conflicting, and their `accuracy` (percent) with its interval."""

    groups: int | None
    n: int | None
    conflicting_n: int | None
    accuracy: Estimate


@dataclass(frozen=True)
class GroupFigures:
    """One condition's (label, bias value) groups: the worst group's accuracy (`worst_group`, bootstrap interval;
    `worst_group_exact` the Clopper-Pearson interval of that group alone), which group it is (`worst_group_label`) and
    its size (`worst_group_n`), how many counted groups share that lowest accuracy (`groups_at_minimum`), the
    bias-balanced accuracy (`bias_balanced`, the unweighted mean over the `groups_counted` counted groups),
    bias-conflicting vs bias-aligned accuracy (`conflicting_accuracy`, `aligned_accuracy`), and the groups too small to
    count (`uncounted`, None in audits before it)."""

    worst_group: Estimate
    worst_group_exact: Interval
    worst_group_label: str | None
    worst_group_n: int | None
    groups_at_minimum: int | None
    bias_balanced: Estimate
    conflicting_accuracy: Estimate
    aligned_accuracy: float | None
    groups_counted: int | None
    uncounted: Uncounted | None

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any]) -> GroupFigures:
        uncounted = entry.get("uncounted")
        return cls(
            worst_group=Estimate._of(entry.get("worst_group"), entry.get("worst_group_ci")),
            worst_group_exact=interval_of(entry.get("worst_group_exact_ci")),
            worst_group_label=entry.get("worst_group_label"),
            worst_group_n=entry.get("worst_group_n"),
            groups_at_minimum=entry.get("groups_at_minimum"),
            bias_balanced=Estimate._of(entry.get("bias_balanced"), entry.get("bias_balanced_ci")),
            conflicting_accuracy=Estimate._of(entry.get("conflicting_accuracy"), entry.get("conflicting_accuracy_ci")),
            aligned_accuracy=number_or_none(entry.get("aligned_accuracy")),
            groups_counted=entry.get("groups_counted"),
            uncounted=Uncounted(
                groups=uncounted.get("groups"),
                n=uncounted.get("n"),
                conflicting_n=uncounted.get("conflicting_n"),
                accuracy=Estimate._of(uncounted.get("accuracy"), uncounted.get("accuracy_ci")),
            )
            if uncounted
            else None,
        )


@dataclass(frozen=True)
class CarrierSwap:
    """The carrier test of one modality: its input swapped for a donor's with the same label and another bias value.
    `follow_rate` is the excess bias-follow rate over a null swap (a fraction); `content_follow_rate` the control swap's
    (another label, same bias value); `accuracy` (percent) and `flip_rate` under the bias swap; `n` swapped samples and
    `skipped` ones (no donor or no null donor to swap in)."""

    follow_rate: Estimate
    content_follow_rate: Estimate | None
    accuracy: Estimate | None
    flip_rate: float | None
    n: int | None
    skipped: int | None

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any]) -> CarrierSwap:
        swap, content = entry.get("bias_swap") or {}, entry.get("content_swap")
        return cls(
            follow_rate=Estimate._of(swap.get("excess_follow_rate"), swap.get("excess_follow_rate_ci")),
            content_follow_rate=Estimate._from_entry(content, "excess_content_follow_rate"),
            accuracy=Estimate._from_entry(swap, "accuracy"),
            flip_rate=number_or_none(swap.get("flip_rate")),
            n=swap.get("n"),
            skipped=swap.get("skipped"),
        )


@dataclass(frozen=True)
class BiasMeasures:
    """The audit's bias measures. `carrier`: the modality with the largest excess bias-follow rate whose interval lies
    above 0 (None when none does, or without the carrier test); `dominant`: the one the model relies on most;
    `follow_rate` and `swaps`: per modality; `worst_group`, `bias_balanced` and `groups`: per condition; `ood`: whether
    the split is out of distribution for the bias (then Full accuracy is the OOD accuracy, `ood_accuracy`); `jsd_mean`
    and `jsd_weighted_mean`: the JSD of the mistakes against the bias priors (low: the mistakes copy the bias).
    `groups_note` and `carrier_note` say why a section is empty."""

    carrier: str | None
    dominant: str | None
    follow_rate: Mapping[str, Estimate]
    swaps: Mapping[str, CarrierSwap]
    worst_group: Mapping[str, Estimate]
    bias_balanced: Mapping[str, Estimate]
    groups: Mapping[str, GroupFigures]
    ood: bool | None
    ood_accuracy: Estimate | None
    jsd_mean: float | None
    jsd_weighted_mean: float | None
    groups_note: str | None
    carrier_note: str | None

    @classmethod
    def _from_document(cls, document: Mapping[str, Any]) -> BiasMeasures:
        groups_section = document.get("groups") or {}
        carrier_section = document.get("carrier") or {}
        jsd = document.get("jsd") or {}
        groups = (
            {name: GroupFigures._from_entry(entry) for name, entry in (groups_section.get("conditions") or {}).items()}
            if groups_section.get("available")
            else {}
        )
        swaps = (
            {name: CarrierSwap._from_entry(entry) for name, entry in (carrier_section.get("modalities") or {}).items()}
            if carrier_section.get("available")
            else {}
        )
        ood = (groups_section.get("shift") or {}).get("ood")
        full = (document.get("summary") or {}).get("full") or {}
        return cls(
            carrier=carrier_section.get("carrier") if carrier_section.get("available") else None,
            dominant=(carrier_section.get("dominant") or ((document.get("summary") or {}).get("missing") or {}).get("dominant")),
            follow_rate=MappingProxyType({name: swap.follow_rate for name, swap in swaps.items()}),
            swaps=MappingProxyType(swaps),
            worst_group=MappingProxyType({name: figures.worst_group for name, figures in groups.items()}),
            bias_balanced=MappingProxyType({name: figures.bias_balanced for name, figures in groups.items()}),
            groups=MappingProxyType(groups),
            ood=ood,
            ood_accuracy=Estimate._of(full.get("accuracy"), full.get("accuracy_ci")) if ood else None,
            jsd_mean=number_or_none(jsd.get("mean")) if jsd.get("available", True) else None,
            jsd_weighted_mean=number_or_none(jsd.get("weighted_mean")) if jsd.get("available", True) else None,
            groups_note=groups_section.get("note"),
            carrier_note=carrier_section.get("note"),
        )

    def _worst_group_as_reported(self, condition: str = "full") -> Estimate | None:
        """The worst-group accuracy with the interval the verdict and the report give it: the exact (Clopper-Pearson)
        interval of that group alone, whose bootstrap interval collapses to a point when every draw picks a group the
        model gets all wrong or all right; the bootstrap one when the audit has no exact interval."""
        figures = self.groups.get(condition)
        if figures is None:
            return None
        if figures.worst_group_exact is None:
            return figures.worst_group
        return Estimate._of(figures.worst_group.value, figures.worst_group_exact)


@dataclass(frozen=True)
class Ceiling:
    """What one modality can tell alone: `ceiling`, a linear probe's accuracy on its branch output (percent); `alone`,
    the model's accuracy with every other modality muted; `utilisation` = alone / ceiling; `source` and `caveat` in
    words."""

    ceiling: Estimate
    alone: Estimate
    utilisation: float | None
    source: str | None
    caveat: str | None


@dataclass(frozen=True)
class Ceilings:
    """The unimodal ceilings: `modalities` (name -> Ceiling), the Gap they alone imply (`implied_gap`, from the ceilings
    that are bounds) vs the `observed_gap`, whether a large Gap is expected from them (`large_gap_expected`), and the
    split the linear probes were fitted on (`probe_split`; None in audits before it)."""

    modalities: Mapping[str, Ceiling]
    implied_gap: float | None
    observed_gap: float | None
    large_gap_expected: bool | None
    probe_split: str | None

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> Ceilings | None:
        if not section or not section.get("available"):
            return None
        modalities = {
            name: Ceiling(
                ceiling=Estimate._of(entry.get("ceiling"), entry.get("ceiling_ci")),
                alone=Estimate._of(entry.get("alone"), entry.get("alone_ci")),
                utilisation=number_or_none(entry.get("utilisation")),
                source=entry.get("source"),
                caveat=entry.get("caveat"),
            )
            for name, entry in (section.get("modalities") or {}).items()
        }
        return cls(
            modalities=MappingProxyType(modalities),
            implied_gap=number_or_none(section.get("implied_gap")),
            observed_gap=number_or_none(section.get("observed_gap")),
            large_gap_expected=section.get("large_gap_expected"),
            probe_split=section.get("probe_split"),
        )


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin of a reliability diagram: samples whose top confidence lies in [`lo`, `hi`), their `count`,
    mean `confidence` (a fraction) and `accuracy` (percent; both None for an empty bin)."""

    lo: float | None
    hi: float | None
    count: int
    confidence: float | None
    accuracy: float | None


@dataclass(frozen=True)
class Calibration:
    """One condition's expected calibration error (`ece`, a fraction, over equal-width confidence bins), its
    `confidence_rise_rate` (the share of samples more confident with a modality muted than with all intact; None for
    Full) and its `reliability` bins."""

    ece: float | None
    confidence_rise_rate: float | None
    reliability: tuple[ReliabilityBin, ...]


def calibration_of(section: Mapping[str, Any] | None) -> Mapping[str, Calibration]:
    if not section or not section.get("available"):
        return MappingProxyType({})
    return MappingProxyType(
        {
            name: Calibration(
                ece=number_or_none(entry.get("ece")),
                confidence_rise_rate=number_or_none(entry.get("confidence_rise_rate")),
                reliability=tuple(
                    ReliabilityBin(
                        lo=number_or_none(b.get("lo")),
                        hi=number_or_none(b.get("hi")),
                        count=int(b.get("count") or 0),
                        confidence=number_or_none(b.get("confidence")),
                        accuracy=number_or_none(b.get("accuracy")),
                    )
                    for b in entry.get("reliability") or ()
                ),
            )
            for name, entry in (section.get("conditions") or {}).items()
        }
    )
