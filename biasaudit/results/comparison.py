"""The typed, frozen view of a before/after comparison (schema `biasaudit.compare`): what `biasaudit.compare` returns."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from biasaudit.arguments import checked, document_with, output_file, reading_document
from biasaudit.results.audit import Interval, frozen_document, thawed_document


@dataclass(frozen=True)
class Change:
    """One figure before and after, the change (after minus before, in points) and its paired 95% interval (None when
    the audits do not pair: `Comparison.unpaired_reason` says why)."""

    before: float | None
    after: float | None
    delta: float | None
    delta_ci: Interval

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any] | None) -> Change | None:
        if entry is None:
            return None
        ci = entry.get("delta_ci")
        return cls(before=entry.get("before"), after=entry.get("after"), delta=entry.get("delta"),
                   delta_ci=(float(ci[0]), float(ci[1])) if ci is not None else None)


@dataclass(frozen=True)
class Comparison:
    """Before vs after: `verdict` (one sentence led by the bias measures), `sentences` (each traced to a figure),
    `paired` intervals or the reason there are none, and the Full accuracy and Gap changes as typed entries."""

    document: Mapping[str, Any] = field(repr=False)
    verdict: str
    sentences: tuple[str, ...]
    paired: bool
    unpaired_reason: str | None
    accuracy: Change
    missing_gap: Change | None
    noisy_gap: Change | None

    @classmethod
    @checked("Comparison.from_dict", document=document_with("summary", "verdict", "paired", what="a comparison document, as Comparison.to_dict() returns"))
    def from_dict(cls, document: Mapping[str, Any]) -> Comparison:
        with reading_document("Comparison.from_dict", "a comparison document"):
            summary = document["summary"]
            return cls(document=frozen_document(copy.deepcopy(dict(document))), verdict=document["verdict"],
                       sentences=tuple(document.get("verdict_sentences") or ()), paired=bool(document["paired"]),
                       unpaired_reason=document.get("unpaired_reason"), accuracy=Change._from_entry(summary["full"]),
                       missing_gap=Change._from_entry((summary.get("missing") or {}).get("gap")),
                       noisy_gap=Change._from_entry((summary.get("noisy") or {}).get("gap")))

    @checked("Comparison.to_dict")
    def to_dict(self) -> dict[str, Any]:
        return thawed_document(self.document)

    @checked("Comparison.to_json", path=output_file("Comparison.to_json"))
    def to_json(self, path: str | os.PathLike) -> Path:
        from biasaudit.results import write_json_atomic

        write_json_atomic(self.to_dict(), Path(path))
        return Path(path)
