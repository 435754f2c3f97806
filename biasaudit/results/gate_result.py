"""The typed, frozen result of `biasaudit.gate` (schema `biasaudit.gate`): one verdict per rule and the overall one."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from biasaudit._core.arguments import checked, document_with, reading_document
from biasaudit.results.audit import frozen_document, thawed_document
from biasaudit.results.estimate import Estimate, number_or_none


@dataclass(frozen=True)
class RuleFigures:
    """The numbers one rule was judged on, typed (gate.schema.json's `figures`); which are set depends on the rule, the
    others are None. The limit: `limit` (a maximum, or the most a change may move) or `minimum`. A single audit's
    figure with its interval: `gap` (points), `accuracy` and `worst_group` (percent). Against a baseline: `baseline`
    and `current` (the rule's figure in each audit), `change` (current minus baseline, with its paired interval),
    `change_points` (a bias-follow rate's change in points, with its interval) and `paired`; `modality` and `carrier`
    (bias-follow rules: the modality, and whether it is the carrier), `statistic` and `drop` (the JSD rule)."""

    limit: float | None
    minimum: float | None
    gap: Estimate | None
    accuracy: Estimate | None
    worst_group: Estimate | None
    baseline: float | None
    current: float | None
    change: Estimate | None
    change_points: Estimate | None
    paired: bool | None
    modality: str | None
    carrier: bool | None
    statistic: str | None
    drop: float | None

    @classmethod
    def _from_figures(cls, figures: Mapping[str, Any]) -> RuleFigures:
        def estimate(key: str, interval_key: str) -> Estimate | None:
            return Estimate._of(figures.get(key), figures.get(interval_key)) if key in figures else None

        return cls(
            limit=number_or_none(figures.get("limit")),
            minimum=number_or_none(figures.get("minimum")),
            gap=estimate("gap", "gap_ci"),
            accuracy=estimate("accuracy", "accuracy_ci"),
            worst_group=estimate("worst_group", "worst_group_ci"),
            baseline=number_or_none(figures.get("baseline")),
            current=number_or_none(figures.get("current")),
            change=estimate("change", "change_ci"),
            change_points=estimate("change_points", "change_ci_points"),
            paired=figures.get("paired"),
            modality=figures.get("modality"),
            carrier=figures.get("carrier"),
            statistic=figures.get("statistic"),
            drop=number_or_none(figures.get("drop")),
        )


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict. Fields: `rule` (its name, e.g. max_gap), `status` (PASS, WARN, FAIL or ERROR), `message` (the
    sentence, with its figures), `figures` (the numbers it was judged on, as written) and `measured` (the same numbers
    typed: RuleFigures, e.g. `rule.measured.change.interval`)."""

    rule: str
    status: str  # PASS | WARN | FAIL | ERROR
    message: str
    figures: Mapping[str, Any]
    measured: RuleFigures


@dataclass(frozen=True)
class MeasureChange:
    """One of the largest changes against the baseline (gate.schema.json's `changes.largest`): `measure` (e.g.
    worst_group[full], bias_follow[text], accuracy[missing:image]), `kind` (bias or accuracy), `what` (in words),
    `unit` (of `baseline` and `current`: percent, or fraction for a bias-follow rate), `baseline` and `current` (the
    figure in each audit) and `change` (current minus baseline in points, with its paired 95% interval when the audits
    pair), as `biasaudit compare` computes them."""

    measure: str
    kind: str
    what: str
    unit: str
    baseline: float | None
    current: float | None
    change: Estimate


@dataclass(frozen=True)
class GateChanges:
    """The measures that moved most against the baseline, whatever the rules (the gate document's `changes`): `largest`
    (MeasureChange, largest first, at most five), `changed` (how many measures changed at all), `paired` (whether the
    intervals pair replicate by replicate) and `unpaired_reason`, and `note` (why none is listed: the audits do not
    compare; None when they do)."""

    largest: tuple[MeasureChange, ...]
    changed: int
    paired: bool | None
    unpaired_reason: str | None
    note: str | None

    @classmethod
    def _from_block(cls, block: Mapping[str, Any] | None) -> GateChanges | None:
        if block is None:
            return None
        return cls(
            largest=tuple(
                MeasureChange(
                    measure=e["measure"],
                    kind=e["kind"],
                    what=e["what"],
                    unit=e["unit"],
                    baseline=number_or_none(e["baseline"]),
                    current=number_or_none(e["current"]),
                    change=Estimate._of(e["change_points"], e["change_ci_points"]),
                )
                for e in block["largest"]
            ),
            changed=int(block["changed"]),
            paired=block["paired"],
            unpaired_reason=block["unpaired_reason"],
            note=block["note"],
        )


@dataclass(frozen=True)
class GateResult:
    """`status` is ERROR when a rule cannot be evaluated on these audits, else FAIL when any rule fails, else WARN or
    PASS; `exit_code` is what `biasaudit gate` exits with (2, 1, 0); `passed` is True for PASS and WARN.

    Fields: `document` (the gate document, read-only; `to_dict()` gives it exactly), `status`, `exit_code`, `rules` (one
    RuleResult per verdict), `current` and `baseline` (the audits' paths as given; None for an audit given in memory or
    no baseline), `paired` (whether the audits pair replicate by replicate; None when no rule compared them),
    `unpaired_reason`, `significant` (a change past its limit fails only when its whole interval lies beyond it) and
    `significant_means`, `jsd_statistic` (the JSD statistic the JSD rule read; None without it), `changes` (with a
    baseline: GateChanges, the measures that moved most against it whatever the rules, e.g.
    `result.changes.largest[0].change`; None without a baseline), `config_file` (the rules file read, or None) and
    `sources` (setting -> where its value came from).
    """

    document: Mapping[str, Any] = field(repr=False)
    status: str
    exit_code: int
    rules: tuple[RuleResult, ...] = field(repr=False)
    current: str | None = field(repr=False)
    baseline: str | None = field(repr=False)
    paired: bool | None
    unpaired_reason: str | None = field(repr=False)
    significant: bool = field(repr=False)
    significant_means: str | None = field(repr=False)
    jsd_statistic: str | None = field(repr=False)
    changes: GateChanges | None = field(repr=False)
    config_file: str | None = field(repr=False)
    sources: Mapping[str, str] = field(repr=False)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @classmethod
    @checked(
        "GateResult.from_dict",
        document=document_with("status", "exit_code", "rules", what="a gate document, as GateResult.to_dict() returns"),
    )
    def from_dict(cls, document: Mapping[str, Any]) -> GateResult:
        with reading_document("GateResult.from_dict", "a gate document"):
            frozen: Mapping[str, Any] = frozen_document(copy.deepcopy(dict(document)))
            settings = frozen.get("settings") or {}
            return cls(
                document=frozen,
                status=frozen["status"],
                exit_code=int(frozen["exit_code"]),
                rules=tuple(
                    RuleResult(r["rule"], r["status"], r["message"], r["figures"], RuleFigures._from_figures(r["figures"]))
                    for r in frozen["rules"]
                ),
                current=frozen.get("current"),
                baseline=frozen.get("baseline"),
                paired=frozen.get("paired"),
                unpaired_reason=frozen.get("unpaired_reason"),
                significant=bool(frozen.get("significant")),
                significant_means=frozen.get("significant_means"),
                jsd_statistic=frozen.get("jsd_statistic"),
                changes=GateChanges._from_block(frozen.get("changes")),
                config_file=settings.get("config_file"),
                sources=MappingProxyType(dict(settings.get("sources") or {})),
            )

    @checked("GateResult.to_dict")
    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = thawed_document(self.document)
        return document

    def __repr__(self) -> str:
        failed = [rule.rule for rule in self.rules if rule.status in ("FAIL", "ERROR")]
        return f"GateResult(status={self.status!r}, exit_code={self.exit_code}, rules={len(self.rules)}, failed={failed!r})"

    @checked("GateResult.to_markdown")
    def to_markdown(self) -> str:
        """The verdict as Markdown for a pull request or a CI job summary: the status, one row per rule with its
        figures (failing rules first), how changes were judged, the largest changes against the baseline; under
        GitHub's comment limit (65,536 characters)."""
        from biasaudit.report.gate_summary import gate_markdown

        return gate_markdown(self.document)

    def _repr_html_(self) -> str:
        """A notebook's view: the overall status and one row per rule."""
        from biasaudit.report.notebook import gate_html

        return gate_html(self)
