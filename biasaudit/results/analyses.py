"""Typed views of an audit's analyses beyond the headline bias measures: the groups themselves, Shapley values, the
interaction share, the ratio sweep, per-class reliance and the mute checks (docs/audit-json.md lists every field).

Read from the document as written; a section the scan did not run, or could not, is None on the Audit. Accuracies are
in percent, shares and rates as fractions, as in audit.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from biasaudit.results.bias import GroupFigures
from biasaudit.results.estimate import Estimate, Interval, interval_of, number_or_none
from biasaudit.results.sections import number_map, numbers, texts


@dataclass(frozen=True)
class Group:
    """One (label, bias value) group of the split, worst first: `label` and `label_name`, `bias` and `bias_name`, `n`
    samples, `conflicting` (True: the bias value points at another class; None: neutral), `alignment` (aligned,
    conflicting or neutral; None in audits before it), `counted` (in worst-group and bias-balanced accuracy: at least
    min_group samples), and per condition its `accuracy` with the Clopper-Pearson interval `accuracy_exact`."""

    label: int
    label_name: str | None
    bias: int
    bias_name: str | None
    n: int
    conflicting: bool | None
    alignment: str | None
    counted: bool
    accuracy: Mapping[str, float | None]
    accuracy_exact: Mapping[str, Interval]

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any]) -> Group:
        return cls(
            label=int(entry["label"]),
            label_name=entry.get("label_name"),
            bias=int(entry["bias"]),
            bias_name=entry.get("bias_name"),
            n=int(entry["n"]),
            conflicting=entry.get("conflicting"),
            alignment=entry.get("alignment"),
            counted=bool(entry.get("counted")),
            accuracy=number_map(entry.get("accuracy")),
            accuracy_exact=MappingProxyType(
                {name: interval_of(ci) for name, ci in (entry.get("accuracy_exact_ci") or {}).items()}
            ),
        )


@dataclass(frozen=True)
class GroupShift:
    """Whether the split's bias distribution differs from train's: the share of bias-aligned samples in train
    (`train_aligned_share`) and in the split (`split_aligned_share`), and `ood`, the verdict."""

    train_aligned_share: float | None
    split_aligned_share: float | None
    ood: bool | None


@dataclass(frozen=True)
class FavouredValue:
    """The classes one bias value (`bias`, `bias_name`) favours in training: `classes`, their `class_names` and their
    training `shares` among the value's `n` training samples."""

    bias: int
    bias_name: str | None
    n: int | None
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    shares: tuple[float | None, ...]


@dataclass(frozen=True)
class Favoured:
    """Which classes each bias value favours, by `rule` (with its `fraction` of the largest share): `values`, how many
    favour `several` classes or `none`, the `near_ties` (bias value names close to the rule's edge) and a `note`."""

    rule: str | None
    fraction: float | None
    values: tuple[FavouredValue, ...]
    several: int | None
    none: int | None
    near_ties: tuple[str, ...]
    note: str | None

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> Favoured | None:
        if not section:
            return None
        return cls(
            rule=section.get("rule"),
            fraction=number_or_none(section.get("fraction")),
            values=tuple(
                FavouredValue(
                    bias=int(v["bias"]),
                    bias_name=v.get("bias_name"),
                    n=v.get("n"),
                    classes=tuple(int(c) for c in v.get("classes") or ()),
                    class_names=texts(v.get("class_names")),
                    shares=numbers(v.get("shares")),
                )
                for v in section.get("values") or ()
            ),
            several=section.get("several"),
            none=section.get("none"),
            near_ties=texts(section.get("near_ties")),
            note=section.get("note"),
        )


@dataclass(frozen=True)
class Groups:
    """The (label, bias value) groups (audit.json's `groups`): `bias_source` (bias_key or kmeans), `grouping` (how
    samples were grouped), `min_group` (the samples a group needs to count), `blind` (why worst-group accuracy cannot see
    the bias, else None), `conflicting_samples`, `counted_conflicting_groups`, `small_groups` (counted groups under 30
    samples), `groups` (one Group each, worst first), `conditions` (condition -> GroupFigures, as `audit.bias.groups`),
    `shift` (GroupShift, or None) and `favoured` (Favoured, or None in audits before it)."""

    bias_source: str | None
    grouping: str | None
    min_group: int | None
    blind: str | None
    conflicting_samples: int | None
    counted_conflicting_groups: int | None
    small_groups: int | None
    groups: tuple[Group, ...]
    conditions: Mapping[str, GroupFigures]
    shift: GroupShift | None
    favoured: Favoured | None

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> Groups | None:
        if section is None:
            return None
        shift = section.get("shift")
        return cls(
            bias_source=section.get("bias_source"),
            grouping=section.get("grouping"),
            min_group=section.get("min_group"),
            blind=section.get("blind"),
            conflicting_samples=section.get("conflicting_samples"),
            counted_conflicting_groups=section.get("counted_conflicting_groups"),
            small_groups=section.get("small_groups"),
            groups=tuple(Group._from_entry(entry) for entry in section.get("groups") or ()),
            conditions=MappingProxyType(
                {name: GroupFigures._from_entry(entry) for name, entry in (section.get("conditions") or {}).items()}
            ),
            shift=GroupShift(
                train_aligned_share=number_or_none(shift.get("train_aligned_share")),
                split_aligned_share=number_or_none(shift.get("split_aligned_share")),
                ood=shift.get("ood"),
            )
            if shift
            else None,
            favoured=Favoured._from_section(section.get("favoured")),
        )


@dataclass(frozen=True)
class ShapleyValue:
    """One modality's Shapley value of correctness (methods.md): `mean` over the samples with its interval, the
    `distribution` (value -> samples, keys as written, e.g. "0.5") and the mean per class (`per_class`)."""

    mean: Estimate
    distribution: Mapping[str, int]
    per_class: tuple[float | None, ...]


@dataclass(frozen=True)
class Shapley:
    """Shapley values (audit.json's `shapley`): `modalities` (name -> ShapleyValue) and the `contingency` of which
    modalities alone get a sample right (both, only:m, neither -> samples)."""

    modalities: Mapping[str, ShapleyValue]
    contingency: Mapping[str, int]

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> Shapley | None:
        if section is None:
            return None

        def value(entry: Mapping[str, Any]) -> ShapleyValue:
            return ShapleyValue(
                mean=Estimate._of(entry.get("mean"), entry.get("mean_ci")),
                distribution=MappingProxyType(dict(entry.get("distribution") or {})),
                per_class=numbers(entry.get("per_class")),
            )

        return cls(
            modalities=MappingProxyType({name: value(entry) for name, entry in (section.get("modalities") or {}).items()}),
            contingency=MappingProxyType(dict(section.get("contingency") or {})),
        )


@dataclass(frozen=True)
class Interaction:
    """The interaction share (audit.json's `interaction`; sampled EMAP): Full `accuracy` minus the additive projection's
    (`additive_accuracy`, R donors, uncorrected), in points: `share` (corrected for the donors' noise, with its interval;
    in audits before the correction it is the plain share), `plain_share` (the uncorrected one; None in those audits),
    `donors` (R), `donor_draw` and `estimator`."""

    accuracy: float | None
    additive_accuracy: float | None
    share: Estimate
    plain_share: float | None
    donors: int | None
    donor_draw: str | None
    estimator: str | None

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> Interaction | None:
        if section is None:
            return None
        return cls(
            accuracy=number_or_none(section.get("accuracy")),
            additive_accuracy=number_or_none(section.get("additive_accuracy")),
            share=Estimate._of(section.get("interaction_share"), section.get("interaction_share_ci")),
            plain_share=number_or_none(section.get("plain_interaction_share")),
            donors=section.get("donors"),
            donor_draw=section.get("donor_draw"),
            estimator=section.get("estimator"),
        )


@dataclass(frozen=True)
class RatioPoint:
    """One step of the ratio sweep: the requested `ratio` of samples muted, the `muted_fraction` actually muted (None in
    audits before it), `accuracy` (percent, with its interval) and `flip_rate`."""

    ratio: float
    muted_fraction: float | None
    accuracy: Estimate
    flip_rate: float | None


def ratio_sweep_of(section: Mapping[str, Any] | None) -> Mapping[str, tuple[RatioPoint, ...]]:
    return MappingProxyType(
        {
            name: tuple(
                RatioPoint(
                    ratio=float(p["ratio"]),
                    muted_fraction=number_or_none(p.get("muted_fraction")),
                    accuracy=Estimate._of(p.get("accuracy"), p.get("accuracy_ci")),
                    flip_rate=number_or_none(p.get("flip_rate")),
                )
                for p in points
            )
            for name, points in (section or {}).items()
        }
    )


@dataclass(frozen=True)
class Reliance:
    """Per-class reliance (audit.json's `reliance`): the `classes`, Full accuracy per class (`full`, percent) and the
    points each class loses with a modality muted (`drop`: modality -> per class)."""

    classes: tuple[str, ...]
    full: tuple[float | None, ...]
    drop: Mapping[str, tuple[float | None, ...]]

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> Reliance | None:
        if not section:
            return None
        return cls(
            classes=texts(section.get("classes")),
            full=numbers(section.get("full")),
            drop=MappingProxyType({name: numbers(values) for name, values in (section.get("drop") or {}).items()}),
        )


@dataclass(frozen=True)
class MuteFinding:
    """A mute that misleads: in `condition`, muting `modality` is `kind` degenerate (one class, `top_class` and
    `top_class_name`, takes `share` of the predictions) or far_outside (its branch embedding lies `distance` RMS z-scores
    from the data's); `message` says what to try."""

    condition: str
    modality: str
    kind: str
    top_class: int | None
    top_class_name: str | None
    share: float | None
    distance: float | None
    message: str


@dataclass(frozen=True)
class MuteChecks:
    """The mute checks (audit.json's `mute_checks`): the `findings`, each modality's mute `distances` (RMS z-scores
    from the data), `compare` (with --mute-compare: modality -> mute choice -> {accuracy, flip_rate}, and the dominant
    modality per choice, as written) and `compare_note` (why no comparison ran)."""

    findings: tuple[MuteFinding, ...]
    distances: Mapping[str, float | None]
    compare: Mapping[str, Any] | None
    compare_note: str | None

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> MuteChecks | None:
        if not section:
            return None
        return cls(
            findings=tuple(
                MuteFinding(
                    condition=f["condition"],
                    modality=f["modality"],
                    kind=f["kind"],
                    top_class=f.get("top_class"),
                    top_class_name=f.get("top_class_name"),
                    share=number_or_none(f.get("share")),
                    distance=number_or_none(f.get("distance")),
                    message=f["message"],
                )
                for f in section.get("findings") or ()
            ),
            distances=number_map(section.get("distances")),
            compare=section.get("compare"),
            compare_note=section.get("compare_note"),
        )
