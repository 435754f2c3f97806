"""The typed, frozen view of an audit: what `biasaudit.scan` returns and `Audit.read` reads back.

The JSON document (schema `biasaudit.audit`, version 1) stays the one source of truth: an Audit holds it read-only
and exposes every section as typed attributes, so `audit.summary.missing.gap` and
`Audit.read("audit.json").summary.missing.gap` are the same number.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from biasaudit._core.annotations import register_remedy
from biasaudit._core.arguments import checked, document_with, not_empty, output_file, reading_document
from biasaudit.errors import InputError
from biasaudit.results import StrPath

from biasaudit.results.analyses import Groups, Interaction, MuteChecks, RatioPoint, Reliance, Shapley, ratio_sweep_of
from biasaudit.results.bias import BiasMeasures, Calibration, Ceilings, calibration_of
from biasaudit.results.estimate import Estimate, Interval, interval_of as _interval
from biasaudit.results.internals import Embeddings, GradientConflict
from biasaudit.results.sections import AuditVerdict, Dataset, Jsd, RunManifest, ran, texts


def frozen_document(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: frozen_document(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(frozen_document(v) for v in value)
    return value


def thawed_document(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: thawed_document(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thawed_document(v) for v in value]
    return value


@dataclass(frozen=True)
class ConditionResult:
    """One condition of the grid: accuracy in percent with its 95% bootstrap interval, and the share of samples whose
    prediction differs from the Full condition's.

    Fields: `name` (e.g. missing:image), `group` (full, missing, noisy, ratio, ...), `modality` and `impairment` (None for
    Full), `severity`, `accuracy` and `accuracy_ci` (percent), `flip_rate` (a fraction), `n` (samples).
    """

    name: str
    group: str
    modality: str | None
    impairment: str | None
    severity: float
    accuracy: float | None
    accuracy_ci: Interval
    flip_rate: float | None
    n: int | None

    @classmethod
    def _from_row(cls, row: Mapping[str, Any]) -> ConditionResult:
        return cls(
            name=row["name"],
            group=row.get("group", "custom"),
            modality=row.get("modality"),
            impairment=row.get("impairment"),
            severity=float(row.get("severity") or 0.0),
            accuracy=row.get("accuracy"),
            accuracy_ci=_interval(row.get("accuracy_ci")),
            flip_rate=row.get("flip_rate"),
            n=row.get("n"),
        )


@dataclass(frozen=True)
class GapSummary:
    """One impairment type (missing or noisy) across modalities: Avg, Gap (highest minus lowest accuracy, methods.md
    section 2), each with its interval, and the modality whose impairment flips the most predictions (`dominant`).

    Fields: `avg` and `avg_ci` (mean accuracy over the modalities' impaired conditions), `gap` and `gap_ci` (points),
    `scores` (modality -> accuracy with it impaired), `flip_rates` (modality -> share of predictions its impairment flips,
    a fraction), `dominant`.
    """

    avg: float | None
    avg_ci: Interval
    gap: float | None
    gap_ci: Interval
    scores: Mapping[str, float]
    flip_rates: Mapping[str, float]
    dominant: str | None

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> GapSummary | None:
        if not section:
            return None
        return cls(
            avg=section.get("avg"),
            avg_ci=_interval(section.get("avg_ci")),
            gap=section.get("gap"),
            gap_ci=_interval(section.get("gap_ci")),
            scores=MappingProxyType(dict(section.get("scores") or {})),
            flip_rates=MappingProxyType(dict(section.get("flip_rates") or {})),
            dominant=section.get("dominant"),
        )


@dataclass(frozen=True)
class Summary:
    """The headline figures: Full accuracy, the missing and noisy Gaps (None when the scan did not run that type) and
    the modality the carrier test names as carrying the bias (None without that test).

    Fields: `accuracy` and `accuracy_ci` (Full, percent), `missing` and `noisy` (GapSummary or None), `carrier`.
    """

    accuracy: float
    accuracy_ci: Interval
    missing: GapSummary | None
    noisy: GapSummary | None
    carrier: str | None


@dataclass(frozen=True, repr=False)
class Audit:
    """An audit of one model on one split. `document` is the whole JSON document, read-only; the attributes are typed
    views of it, read from it and never written back, so `to_dict()` is the document exactly:

    `summary` (Full accuracy, the missing and noisy Gaps, the carrier), `conditions` (one row per condition), `bias`
    (the bias measures: carrier, bias-follow rates, worst-group and bias-balanced accuracy per condition, OOD, JSD;
    biasaudit.results.bias), `ceilings` (what each modality can tell alone) and `calibration` (per condition);
    `manifest` (seed, settings, versions, hashes), `dataset` (split, sizes, modalities, names), `verdict` (headline and
    sentences), `jsd` (the JSD of the mistakes per bias value), `groups` (every (label, bias value) group, the shift and
    the favoured classes), `embeddings` (the projected fused features), `gradient_conflict`, `shapley`, `interaction`,
    `ratio_sweep` (modality -> its steps), `reliance` (per class), `mute_checks`, `notes` (plain sentences),
    `diagnostics` (the analyses that ran) and `unavailable` (section -> the note saying why it could not run). An
    analysis the scan did not run, or could not, is None (`calibration` and `ratio_sweep` are then empty).
    Accuracies are in percent, rates as fractions, as in audit.json; biasaudit.results.sections,
    biasaudit.results.internals and biasaudit.results.analyses document each view. Write it with `to_json` / `to_html`;
    read one back with `Audit.read`."""

    document: Mapping[str, Any]
    summary: Summary
    conditions: tuple[ConditionResult, ...]
    bias: BiasMeasures
    ceilings: Ceilings | None
    calibration: Mapping[str, Calibration]
    manifest: RunManifest
    dataset: Dataset
    verdict: AuditVerdict | None
    jsd: Jsd | None
    groups: Groups | None
    embeddings: Embeddings | None
    gradient_conflict: GradientConflict | None
    shapley: Shapley | None
    interaction: Interaction | None
    ratio_sweep: Mapping[str, tuple[RatioPoint, ...]]
    reliance: Reliance | None
    mute_checks: MuteChecks | None
    notes: tuple[str, ...]
    diagnostics: tuple[str, ...]
    unavailable: Mapping[str, str | None]

    @classmethod
    @checked(
        "Audit.from_dict", document=document_with("summary", "conditions", what="an audit document, as Audit.to_dict() returns")
    )
    def from_dict(cls, document: Mapping[str, Any]) -> Audit:
        """The typed view of an audit document (a copy is taken: later changes to `document` do not reach it)."""
        with reading_document("Audit.from_dict", "an audit document"):
            frozen: Mapping[str, Any] = frozen_document(copy.deepcopy(dict(document)))
            summary = frozen["summary"]
            full = summary["full"]
            return cls(
                document=frozen,
                summary=Summary(
                    accuracy=full["accuracy"],
                    accuracy_ci=_interval(full.get("accuracy_ci")),
                    missing=GapSummary._from_section(summary.get("missing")),
                    noisy=GapSummary._from_section(summary.get("noisy")),
                    carrier=summary.get("carrier"),
                ),
                conditions=tuple(ConditionResult._from_row(row) for row in frozen["conditions"]),
                bias=BiasMeasures._from_document(frozen),
                ceilings=Ceilings._from_section(frozen.get("ceilings")),
                calibration=calibration_of(frozen.get("calibration")),
                manifest=RunManifest._from_section(frozen["manifest"]),
                dataset=Dataset._from_section(frozen["dataset"]),
                verdict=AuditVerdict._from_section(frozen.get("verdict")),
                jsd=Jsd._from_section(ran(frozen, "jsd")),
                groups=Groups._from_section(ran(frozen, "groups")),
                embeddings=Embeddings._from_section(ran(frozen, "embeddings")),
                gradient_conflict=GradientConflict._from_section(ran(frozen, "gradient_conflict")),
                shapley=Shapley._from_section(ran(frozen, "shapley")),
                interaction=Interaction._from_section(ran(frozen, "interaction")),
                ratio_sweep=ratio_sweep_of(frozen.get("ratio_sweep")),
                reliance=Reliance._from_section(frozen.get("reliance")),
                mute_checks=MuteChecks._from_section(frozen.get("mute_checks")),
                notes=texts(frozen.get("notes")),
                diagnostics=texts(frozen.get("diagnostics")),
                unavailable=MappingProxyType(
                    {
                        key: section.get("note")
                        for key, section in frozen.items()
                        if isinstance(section, Mapping) and section.get("available") is False
                    }
                ),
            )

    @classmethod
    @checked("Audit.read")
    def read(cls, path: StrPath) -> Audit:
        """Read an audit.json (validated against the published schema; a damaged file raises InputError naming it)."""
        from biasaudit.results import read_audit

        return cls.from_dict(read_audit(path))

    @checked("Audit.condition", name=not_empty)
    def condition(self, name: str) -> ConditionResult:
        """The condition named `name` (e.g. "missing:image", "ratio:text:0.5")."""
        for result in self.conditions:
            if result.name == name:
                return result
        raise InputError(f"The audit has no condition {name!r}. Available: {', '.join(c.name for c in self.conditions)}.")

    @checked("Audit.to_dict")
    def to_dict(self) -> dict[str, Any]:
        """A mutable deep copy of the JSON document."""
        document: dict[str, Any] = thawed_document(self.document)
        return document

    @checked("Audit.to_json", path=output_file("Audit.to_json"))
    def to_json(self, path: StrPath) -> Path:
        """Write the document as audit JSON (atomically); returns the path."""
        from biasaudit.results import write_json_atomic

        write_json_atomic(self.to_dict(), Path(path))
        return Path(path)

    @checked("Audit.to_html", path=output_file("Audit.to_html"))
    def to_html(self, path: StrPath) -> Path:
        """Render the self-contained HTML report (atomically); returns the path."""
        from biasaudit.report.render import write_audit_html

        write_audit_html(self.to_dict(), Path(path))
        return Path(path)

    def __str__(self) -> str:
        return json.dumps(self.to_dict(), indent=2)[:2000]

    def __repr__(self) -> str:
        full = Estimate._of(self.summary.accuracy, self.summary.accuracy_ci)
        worst = self.bias._worst_group_as_reported()
        headline = self.verdict.headline if self.verdict is not None else None
        return (
            f"Audit(split={self.dataset.split!r}, full_accuracy={full}, carrier={self.bias.carrier!r}, "
            f"dominant={self.bias.dominant!r}, worst_group={str(worst) if worst else None!r}, verdict={headline!r})"
        )

    def _repr_html_(self) -> str:
        """A notebook's view: the verdict and the conditions table."""
        from biasaudit.report.notebook import audit_html

        return audit_html(self)


def _audit_remedy(value: Any, wanted: set[Any]) -> str:
    if Audit in wanted and isinstance(value, (str, os.PathLike)):
        return " Read the file first: ba.Audit.read(path)."
    if Audit in wanted and isinstance(value, Mapping):
        return " Wrap an audit document with ba.Audit.from_dict(document)."
    return ""


register_remedy(_audit_remedy)
