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
from biasaudit.results.estimate import Estimate, Interval


@dataclass(frozen=True)
class Change:
    """One figure before and after, the change (after minus before, in points) and its paired 95% interval (None when
    the audits do not pair: `Comparison.unpaired_reason` says why).

    Fields: `before`, `after`, `delta` (after minus before) and `delta_ci`; `change` is `delta` with its interval as an
    Estimate.
    """

    before: float | None
    after: float | None
    delta: float | None
    delta_ci: Interval

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
        return cls(before=entry.get("before"), after=entry.get("after"), delta=entry.get("delta"),
                   delta_ci=(float(ci[0]), float(ci[1])) if ci is not None else None)


@dataclass(frozen=True)
class BiasChanges:
    """The bias measures before and after (compare.json's `bias` block): the carrier named by each audit, each
    modality's excess bias-follow rate (fractions), worst-group and bias-balanced accuracy per condition (percent), and
    OOD accuracy when the split is out of distribution. `lacking` names the measures one of the audits did not take.

    Fields: `carrier_before`, `carrier_after`, `follow_rate` (modality -> Change), `worst_group` and `bias_balanced`
    (condition -> Change), `ood` (a Change, or None in distribution), `lacking`.
    """

    carrier_before: str | None
    carrier_after: str | None
    follow_rate: Mapping[str, Change]
    worst_group: Mapping[str, Change]
    bias_balanced: Mapping[str, Change]
    ood: Change | None
    lacking: Mapping[str, Any]

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> BiasChanges:
        section = section or {}

        def changes(key: str) -> Mapping[str, Change]:
            return MappingProxyType({name: Change._from_entry(entry) for name, entry in (section.get(key) or {}).items()})

        carrier = section.get("carrier") or {}
        return cls(carrier_before=carrier.get("before"), carrier_after=carrier.get("after"), follow_rate=changes("bias_follow"),
                   worst_group=changes("worst_group"), bias_balanced=changes("bias_balanced"),
                   ood=Change._from_entry(section.get("ood")),
                   lacking=MappingProxyType(dict(section.get("lacking") or {})))


@dataclass(frozen=True)
class Comparison:
    """Before vs after: `verdict` (one sentence led by the bias measures), `sentences` (each traced to a figure),
    `paired` intervals or the reason there are none, the Full accuracy and Gap changes, and `bias`, the bias measures'
    changes (e.g. `comparison.bias.worst_group["full"].change`), as typed entries.

    Fields: `document` (compare.json, read-only), `verdict`, `sentences`, `paired`, `unpaired_reason`, `accuracy` (Full
    accuracy's Change), `missing_gap` and `noisy_gap` (the Gaps' Changes, None when not measured), `bias` (BiasChanges).
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

    @classmethod
    @checked("Comparison.from_dict", document=document_with("summary", "verdict", "paired",
                                                             what="a comparison document, as Comparison.to_dict() returns"))
    def from_dict(cls, document: Mapping[str, Any]) -> Comparison:
        with reading_document("Comparison.from_dict", "a comparison document"):
            summary = document["summary"]
            return cls(document=frozen_document(copy.deepcopy(dict(document))), verdict=document["verdict"],
                       sentences=tuple(document.get("verdict_sentences") or ()), paired=bool(document["paired"]),
                       unpaired_reason=document.get("unpaired_reason"), accuracy=Change._from_entry(summary["full"]),
                       missing_gap=Change._from_entry((summary.get("missing") or {}).get("gap")),
                       noisy_gap=Change._from_entry((summary.get("noisy") or {}).get("gap")),
                       bias=BiasChanges._from_section(document.get("bias")))

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
