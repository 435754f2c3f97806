"""Typed views of the audit's sections about the model's internals: the embedding plots of its fused features and the
gradient conflict between its modalities (docs/audit-json.md lists every field). Read as sections.py's views are: a
section the scan did not run, or could not run, is None on the Audit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from biasaudit.results.estimate import number_or_none
from biasaudit.results.sections import numbers, texts


@dataclass(frozen=True)
class AngularSpread:
    """How tightly one class's points cluster in the fused feature space under the plotted bias value: `class_label`
    (JSON `class`), `n` points, `mean_angle_deg` to their mean direction, and `train_count_under_bias` (the class's
    training samples with that bias value; None in audits before it)."""

    class_label: int
    n: int | None
    mean_angle_deg: float | None
    train_count_under_bias: int | None


@dataclass(frozen=True)
class Embeddings:
    """The embedding plots (audit.json's `embeddings`): the fused features of the samples with one bias value
    (`bias_value`, `bias_name`), projected by `method` (umap or pca) to 2-D: `euclidean` and `cosine` points, `n_points`
    of them, their `labels`, and the `angular_spread` per class."""

    method: str | None
    bias_value: int | None
    bias_name: str | None
    n_points: int | None
    euclidean: tuple[tuple[float, float], ...]
    cosine: tuple[tuple[float, float], ...]
    labels: tuple[int, ...]
    angular_spread: tuple[AngularSpread, ...]

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> Embeddings | None:
        if section is None:
            return None

        def points(key: str) -> tuple[tuple[float, float], ...]:
            return tuple((float(x), float(y)) for x, y in section.get(key) or ())

        return cls(
            method=section.get("method"),
            bias_value=section.get("bias_value"),
            bias_name=section.get("bias_name"),
            n_points=section.get("n_points"),
            euclidean=points("euclidean"),
            cosine=points("cosine"),
            labels=tuple(int(v) for v in section.get("labels") or ()),
            angular_spread=tuple(
                AngularSpread(
                    class_label=int(entry["class"]),
                    n=entry.get("n"),
                    mean_angle_deg=number_or_none(entry.get("mean_angle_deg")),
                    train_count_under_bias=entry.get("train_count_under_bias"),
                )
                for entry in section.get("angular_spread") or ()
            ),
        )


@dataclass(frozen=True)
class Histogram:
    """Counts of values in bins: `counts` (one per bin; bin i holds the values in [edges[i], edges[i + 1])) and the
    bins' `edges`."""

    edges: tuple[float | None, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class GradientPair:
    """Gradient conflict of two modalities (`a`, `b`) on the shared parameters: per batch the cosine of their gradients
    (`cosines`; below 0: they pull apart) and the ratio of their norms (`norm_ratios`), the `fraction_negative` of
    batches, the `mean_cosine`, `n_undefined_batches` (a zero gradient: no cosine) and the cosines' `histogram`."""

    a: str
    b: str
    cosines: tuple[float | None, ...]
    norm_ratios: tuple[float | None, ...]
    fraction_negative: float | None
    mean_cosine: float | None
    n_undefined_batches: int | None
    histogram: Histogram | None


@dataclass(frozen=True)
class GradientConflict:
    """Gradient conflict between the modalities (audit.json's `gradient_conflict`): measured over `n_batches` batches
    (`batch_ordinals`) on `n_shared_parameters` shared parameters (`shared_parameter_names`, chosen by `shared_rule`),
    for the `modalities`, one GradientPair per pair in `pairs`."""

    n_batches: int | None
    batch_ordinals: tuple[int, ...]
    n_shared_parameters: int | None
    shared_parameter_names: tuple[str, ...]
    shared_rule: str | None
    modalities: tuple[str, ...]
    pairs: tuple[GradientPair, ...]

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> GradientConflict | None:
        if section is None:
            return None

        def pair(entry: Mapping[str, Any]) -> GradientPair:
            histogram = entry.get("histogram")
            counts = tuple(int(c) for c in (histogram or {}).get("counts") or ())
            return GradientPair(
                a=entry["a"],
                b=entry["b"],
                cosines=numbers(entry.get("cosines")),
                norm_ratios=numbers(entry.get("norm_ratios")),
                fraction_negative=number_or_none(entry.get("fraction_negative")),
                mean_cosine=number_or_none(entry.get("mean_cosine")),
                n_undefined_batches=entry.get("n_undefined_batches"),
                histogram=Histogram(numbers(histogram.get("edges")), counts) if histogram else None,
            )

        return cls(
            n_batches=section.get("n_batches"),
            batch_ordinals=tuple(int(v) for v in section.get("batch_ordinals") or ()),
            n_shared_parameters=section.get("n_shared_parameters"),
            shared_parameter_names=texts(section.get("shared_parameter_names")),
            shared_rule=section.get("shared_rule"),
            modalities=texts(section.get("modalities")),
            pairs=tuple(pair(entry) for entry in section.get("pairs") or ()),
        )
