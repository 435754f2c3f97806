"""The typed, frozen view of a before/after comparison (schema `biasaudit.compare`): what `biasaudit.compare` returns."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, overload

from biasaudit._core.arguments import checked, document_with, output_file, reading_document
from biasaudit.results import StrPath
from biasaudit.results.audit import frozen_document, thawed_document
from biasaudit.results.estimate import Estimate, Interval, interval_of


@dataclass(frozen=True)
class Pair:
    """A figure `before` and `after` that has no paired change (JSD, ceilings, tie counts): the two values as written."""

    before: float | None
    after: float | None

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any] | None) -> Pair | None:
        return cls(before=entry.get("before"), after=entry.get("after")) if entry else None


@dataclass(frozen=True)
class Change:
    """One figure before and after, the change (after minus before, in points) and its paired 95% interval (None when
    the audits do not pair: `Comparison.unpaired_reason` says why).

    Fields: `before`, `after`, `delta` (after minus before) and `delta_ci`; `change` is `delta` with its interval as an
    Estimate; `groups_at_minimum` (worst-group entries only: how many groups share the lowest accuracy before and after,
    since 0% -> 0% is no change only when as many groups are at 0%; None elsewhere and in audits before the count).
    """

    before: float | None
    after: float | None
    delta: float | None
    delta_ci: Interval
    groups_at_minimum: Pair | None = None

    @property
    def change(self) -> Estimate:
        """The change with its paired interval, as an Estimate (`.excludes_zero`: beyond the sampling noise)."""
        return Estimate(self.delta, *(self.delta_ci if self.delta_ci is not None else (None, None)))

    @overload
    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any]) -> Change: ...
    @overload
    @classmethod
    def _from_entry(cls, entry: None) -> None: ...

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any] | None) -> Change | None:
        if entry is None:
            return None
        ci = entry.get("delta_ci")
        return cls(
            before=entry.get("before"),
            after=entry.get("after"),
            delta=entry.get("delta"),
            delta_ci=(float(ci[0]), float(ci[1])) if ci is not None else None,
            groups_at_minimum=Pair._from_entry(entry.get("groups_at_minimum")),
        )


@dataclass(frozen=True)
class BiasChanges:
    """The bias measures before and after (compare.json's `bias` block): the carrier named by each audit, each
    modality's excess bias-follow rate (fractions), worst-group and bias-balanced accuracy per condition (percent), and
    OOD accuracy when the split is out of distribution. `lacking` names the measures one of the audits did not take.

    Fields: `carrier_before`, `carrier_after`, `follow_rate` (modality -> Change), `worst_group` and `bias_balanced`
    (condition -> Change), `ood` (a Change, or None in distribution), `ceilings` (CeilingsChange, None when neither audit
    measured them), `interaction` (the interaction share's Change, None unless both audits measured it), `lacking`
    (section -> the reasons its figures are missing or not compared).
    """

    carrier_before: str | None
    carrier_after: str | None
    follow_rate: Mapping[str, Change]
    worst_group: Mapping[str, Change]
    bias_balanced: Mapping[str, Change]
    ood: Change | None
    ceilings: CeilingsChange | None
    interaction: Change | None
    lacking: Mapping[str, tuple[str, ...]]

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> BiasChanges:
        section = section or {}

        def changes(key: str) -> Mapping[str, Change]:
            return MappingProxyType({name: Change._from_entry(entry) for name, entry in (section.get(key) or {}).items()})

        carrier = section.get("carrier") or {}
        return cls(
            carrier_before=carrier.get("before"),
            carrier_after=carrier.get("after"),
            follow_rate=changes("bias_follow"),
            worst_group=changes("worst_group"),
            bias_balanced=changes("bias_balanced"),
            ood=Change._from_entry(section.get("ood")),
            ceilings=CeilingsChange._from_section(section.get("ceilings")),
            interaction=Change._from_entry(section.get("interaction")),
            lacking=MappingProxyType({key: tuple(why) for key, why in (section.get("lacking") or {}).items()}),
        )


@dataclass(frozen=True)
class CeilingChange:
    """One modality's ceiling before and after: `ceiling` and `alone` (percent), `utilisation` (alone / ceiling), and
    `caveat_before` / `caveat_after` (why that audit's ceiling bounds nothing; None when it is a bound)."""

    ceiling: Pair | None
    alone: Pair | None
    utilisation: Pair | None
    caveat_before: str | None
    caveat_after: str | None


@dataclass(frozen=True)
class CeilingsChange:
    """The unimodal ceilings before and after (compare.json's `bias.ceilings`): `modalities` (name -> CeilingChange),
    `implied_gap` and `observed_gap` (points), `large_gap_expected_before` and `large_gap_expected_after`."""

    modalities: Mapping[str, CeilingChange]
    implied_gap: Pair | None
    observed_gap: Pair | None
    large_gap_expected_before: bool | None
    large_gap_expected_after: bool | None

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> CeilingsChange | None:
        if not section:
            return None
        expected = section.get("large_gap_expected") or {}
        return cls(
            modalities=MappingProxyType(
                {
                    name: CeilingChange(
                        ceiling=Pair._from_entry(entry.get("ceiling")),
                        alone=Pair._from_entry(entry.get("alone")),
                        utilisation=Pair._from_entry(entry.get("utilisation")),
                        caveat_before=(entry.get("caveat") or {}).get("before"),
                        caveat_after=(entry.get("caveat") or {}).get("after"),
                    )
                    for name, entry in (section.get("modalities") or {}).items()
                }
            ),
            implied_gap=Pair._from_entry(section.get("implied_gap")),
            observed_gap=Pair._from_entry(section.get("observed_gap")),
            large_gap_expected_before=expected.get("before"),
            large_gap_expected_after=expected.get("after"),
        )


@dataclass(frozen=True)
class ConditionChange:
    """One condition before and after (a row of compare.json's `conditions`): `name`, `accuracy` (a Change, percent;
    its `change` the paired delta), each audit's own interval (`before_ci`, `after_ci`) and flip rate (`flip_before`,
    `flip_after`, fractions)."""

    name: str
    accuracy: Change
    before_ci: Interval
    after_ci: Interval
    flip_before: float | None
    flip_after: float | None

    @classmethod
    def _from_row(cls, row: Mapping[str, Any]) -> ConditionChange:
        return cls(
            name=row["name"],
            accuracy=Change._from_entry(row),
            before_ci=interval_of(row.get("before_ci")),
            after_ci=interval_of(row.get("after_ci")),
            flip_before=row.get("flip_before"),
            flip_after=row.get("flip_after"),
        )


@dataclass(frozen=True)
class GroupChange:
    """One impairment type (missing or noisy) before and after: `avg` and `gap` (Changes, points), the dominant modality
    (`dominant_before`, `dominant_after`) and each modality's flip rate (`flip_rates_before`, `flip_rates_after`)."""

    avg: Change
    gap: Change
    dominant_before: str | None
    dominant_after: str | None
    flip_rates_before: Mapping[str, float | None]
    flip_rates_after: Mapping[str, float | None]

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> GroupChange | None:
        if not section:
            return None
        dominant, flips = section.get("dominant") or {}, section.get("flip_rates") or {}
        return cls(
            avg=Change._from_entry(section["avg"]),
            gap=Change._from_entry(section["gap"]),
            dominant_before=dominant.get("before"),
            dominant_after=dominant.get("after"),
            flip_rates_before=MappingProxyType(dict(flips.get("before") or {})),
            flip_rates_after=MappingProxyType(dict(flips.get("after") or {})),
        )


@dataclass(frozen=True)
class JsdChange:
    """The JSD of the mistakes before and after (no paired interval): `mean` and `weighted_mean`, each a Pair."""

    mean: Pair | None
    weighted_mean: Pair | None


@dataclass(frozen=True)
class AlsoSplitChange:
    """fix with a second split (compare.json's `also_split`): its `split`, Full accuracy's Change (`full`), `verdict`,
    `sentences` and bias measures' changes (`bias`); its whole comparison is also_compare.json."""

    split: str
    full: Change
    verdict: str
    sentences: tuple[str, ...]
    bias: BiasChanges


@dataclass(frozen=True)
class Comparison:
    """Before vs after: `verdict` (one sentence led by the bias measures), `sentences` (each traced to a figure),
    `paired` intervals or the reason there are none, the Full accuracy and Gap changes, and `bias`, the bias measures'
    changes (e.g. `comparison.bias.worst_group["full"].change`), as typed entries.

    Fields: `document` (compare.json, read-only), `verdict`, `sentences`, `paired`, `unpaired_reason`, `accuracy` (Full
    accuracy's Change), `missing_gap` and `noisy_gap` (the Gaps' Changes, None when not measured), `bias` (BiasChanges),
    `split`, `conditions` (one ConditionChange per condition, in the before audit's order), `missing` and `noisy` (Avg,
    Gap, dominant modality and flip rates: GroupChange, None when not measured), `jsd` (JsdChange, None unless both audits
    measured it), `note` (how to read the deltas), `also_split` (fix's second split: AlsoSplitChange, else None) and
    `before_is` (fix --from-scratch: what the before audit is, else None). `to_dict()` is compare.json exactly.
    """

    document: Mapping[str, Any] = field(repr=False)
    verdict: str
    sentences: tuple[str, ...]
    paired: bool
    unpaired_reason: str | None
    accuracy: Change
    missing_gap: Change | None
    noisy_gap: Change | None
    bias: BiasChanges = field(repr=False)
    split: str = field(repr=False)
    conditions: tuple[ConditionChange, ...] = field(repr=False)
    missing: GroupChange | None = field(repr=False)
    noisy: GroupChange | None = field(repr=False)
    jsd: JsdChange | None = field(repr=False)
    note: str = field(repr=False)
    also_split: AlsoSplitChange | None = field(repr=False)
    before_is: str | None = field(repr=False)

    @classmethod
    @checked(
        "Comparison.from_dict",
        document=document_with("summary", "verdict", "paired", what="a comparison document, as Comparison.to_dict() returns"),
    )
    def from_dict(cls, document: Mapping[str, Any]) -> Comparison:
        with reading_document("Comparison.from_dict", "a comparison document"):
            frozen: Mapping[str, Any] = frozen_document(copy.deepcopy(dict(document)))
            summary, jsd, also = frozen["summary"], frozen.get("jsd"), frozen.get("also_split")
            return cls(
                document=frozen,
                verdict=frozen["verdict"],
                sentences=tuple(frozen.get("verdict_sentences") or ()),
                paired=bool(frozen["paired"]),
                unpaired_reason=frozen.get("unpaired_reason"),
                accuracy=Change._from_entry(summary["full"]),
                missing_gap=Change._from_entry((summary.get("missing") or {}).get("gap")),
                noisy_gap=Change._from_entry((summary.get("noisy") or {}).get("gap")),
                bias=BiasChanges._from_section(frozen.get("bias")),
                split=frozen.get("split") or "",
                conditions=tuple(ConditionChange._from_row(row) for row in frozen.get("conditions") or ()),
                missing=GroupChange._from_section(summary.get("missing")),
                noisy=GroupChange._from_section(summary.get("noisy")),
                jsd=JsdChange(mean=Pair._from_entry(jsd.get("mean")), weighted_mean=Pair._from_entry(jsd.get("weighted_mean")))
                if jsd
                else None,
                note=frozen.get("note") or "",
                also_split=AlsoSplitChange(
                    split=also["split"],
                    full=Change._from_entry(also["full"]),
                    verdict=also["verdict"],
                    sentences=tuple(also.get("verdict_sentences") or ()),
                    bias=BiasChanges._from_section(also.get("bias")),
                )
                if also
                else None,
                before_is=frozen.get("before_is"),
            )

    def __repr__(self) -> str:
        worst = self.bias.worst_group.get("full")
        return (
            f"Comparison(verdict={self.verdict!r}, paired={self.paired}, full_accuracy_change={self.accuracy.change}, "
            f"worst_group_change={str(worst.change) if worst else None!r}, "
            f"missing_gap_change={str(self.missing_gap.change) if self.missing_gap else None!r})"
        )

    def _repr_html_(self) -> str:
        """A notebook's view: the verdict and the changes table."""
        from biasaudit.report.notebook import comparison_html

        return comparison_html(self)

    @checked("Comparison.to_dict")
    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = thawed_document(self.document)
        return document

    @checked("Comparison.to_json", path=output_file("Comparison.to_json"))
    def to_json(self, path: StrPath) -> Path:
        from biasaudit.results import write_json_atomic

        write_json_atomic(self.to_dict(), Path(path))
        return Path(path)
