"""Typed views of an audit's descriptive sections: the audited split, the run manifest, the verdict and the JSD of the
mistakes (docs/audit-json.md lists every field); the embedding plots and gradient conflict are in internals.py. Also
the readers every typed view shares (`ran`, `numbers`, `texts`, ...).

Each view is read from the document as written, so `Audit.to_dict()` stays the document exactly. A section the scan
did not run, or could not run (`available: false`), is None on the Audit; `Audit.unavailable` keeps the note that says
why. Fields added to schema version 1 after its first audits (`randomness`, `probe_split`, ...) are None in older files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from biasaudit.results.estimate import number_or_none


def ran(document: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """The section `key` when the scan wrote it and could run it, else None."""
    section = document.get(key)
    if not isinstance(section, Mapping) or section.get("available") is False:
        return None
    return section


def numbers(values: Any) -> tuple[float | None, ...]:
    return tuple(number_or_none(v) for v in values or ())


def optional_numbers(values: Any) -> tuple[float | None, ...] | None:
    return None if values is None else numbers(values)


def texts(values: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in values or ())


def optional_texts(values: Any) -> tuple[str, ...] | None:
    return None if values is None else texts(values)


def read_only(values: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(values or {}))


def number_map(values: Any) -> Mapping[str, float | None]:
    return MappingProxyType({str(k): number_or_none(v) for k, v in (values or {}).items()})


@dataclass(frozen=True)
class DatasetModality:
    """One input of the model as the adapter declares it: `name` and `kind` (image, text, tokens, tensor, ...)."""

    name: str
    kind: str


@dataclass(frozen=True)
class Dataset:
    """The audited split (audit.json's `dataset`): `split`, `n` samples, `num_classes`, `modalities` in declared order,
    `class_names` and `bias_names` (empty when the adapter names none)."""

    split: str
    n: int
    num_classes: int
    modalities: tuple[DatasetModality, ...]
    class_names: tuple[str, ...] | None
    bias_names: tuple[str, ...] | None

    @classmethod
    def _from_section(cls, section: Mapping[str, Any]) -> Dataset:
        return cls(
            split=section["split"],
            n=int(section["n"]),
            num_classes=int(section["num_classes"]),
            modalities=tuple(DatasetModality(m["name"], m["kind"]) for m in section["modalities"]),
            class_names=optional_texts(section.get("class_names")),
            bias_names=optional_texts(section.get("bias_names")),
        )


@dataclass(frozen=True)
class RunManifest:
    """What the audit depends on (audit.json's `manifest`): `tool` and `version` of biasaudit, `created` (UTC, ISO 8601),
    `wall_time_s`, `seed`, `device`, `versions` (library -> version), `config` (every scan setting, as written),
    `checkpoint` (path, sha256) and `adapter` (spec, sha256), `randomness` (the generator of every draw; None in audits
    drawn with numpy per sample, which never pair with others), `shards` (count and how, only for a sharded scan), `run`
    (the file set this audit belongs to) and `forwards_per_sample` (model forwards per sample, by stage). `section` is
    the JSON object itself; `manifest["config"]` reads it as a mapping, as code written before the typed view does."""

    tool: str | None
    version: str | None
    created: str | None
    wall_time_s: float | None
    seed: int
    device: str | None
    versions: Mapping[str, str]
    config: Mapping[str, Any]
    checkpoint: Mapping[str, Any] | None
    adapter: Mapping[str, Any] | None
    randomness: Mapping[str, Any] | None
    shards: Mapping[str, Any] | None
    run: Mapping[str, Any] | None
    forwards_per_sample: Mapping[str, float | None]
    section: Mapping[str, Any] = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.section[key]

    @classmethod
    def _from_section(cls, section: Mapping[str, Any]) -> RunManifest:
        def part(key: str) -> Mapping[str, Any] | None:
            value = section.get(key)
            return value if isinstance(value, Mapping) else None

        return cls(
            tool=section.get("tool"),
            version=section.get("version"),
            created=section.get("created"),
            wall_time_s=number_or_none(section.get("wall_time_s")),
            seed=int(section["seed"]),
            device=section.get("device"),
            versions=read_only(section.get("versions")),
            config=section["config"],
            checkpoint=part("checkpoint"),
            adapter=part("adapter"),
            randomness=part("randomness"),
            shards=part("shards"),
            run=part("run"),
            forwards_per_sample=number_map(section.get("forwards_per_sample")),
            section=section,
        )


@dataclass(frozen=True)
class AuditVerdict:
    """The audit in words: the `headline` and the `sentences` behind it (bias measures first, then reliance, then
    caveats), each quoting its figures."""

    headline: str
    sentences: tuple[str, ...]

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> AuditVerdict | None:
        if not section:
            return None
        return cls(headline=section.get("headline") or "", sentences=texts(section.get("sentences")))


@dataclass(frozen=True)
class JsdBias:
    """The JSD of one bias value's mistakes: `bias` (its index), `n_eval` samples and `n_wrong` mistakes, the JSD of
    the mistakes' mean softmax (`soft`) and of their predicted classes (`argmax`) against the bias prior (None below
    min_wrong mistakes), the `prior` itself and the mistakes' distributions `q_soft` and `q_argmax` (None then too)."""

    bias: int | None
    n_eval: int | None
    n_wrong: int | None
    soft: float | None
    argmax: float | None
    prior: tuple[float | None, ...]
    q_soft: tuple[float | None, ...] | None
    q_argmax: tuple[float | None, ...] | None

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any]) -> JsdBias:
        return cls(
            bias=entry.get("bias"),
            n_eval=entry.get("n_eval"),
            n_wrong=entry.get("n_wrong"),
            soft=number_or_none(entry.get("soft")),
            argmax=number_or_none(entry.get("argmax")),
            prior=numbers(entry.get("prior")),
            q_soft=optional_numbers(entry.get("q_soft")),
            q_argmax=optional_numbers(entry.get("q_argmax")),
        )


@dataclass(frozen=True)
class JsdMostFrequent:
    """The JSD of the split's most frequent bias value (`bias`, its `name`): `soft` and `argmax` as in JsdBias."""

    bias: int | None
    name: str | None
    soft: float | None
    argmax: float | None


@dataclass(frozen=True)
class Jsd:
    """The JSD of the model's mistakes against the bias prior (audit.json's `jsd`; 0: the mistakes copy the bias, 1:
    not at all). `bias_source` (bias_key or kmeans), `variant` (soft or argmax, the one `mean` reads), `min_wrong` (the
    mistakes a bias value needs to count), `n_wrong` (mistakes in all), `mean` and `weighted_mean` (weighted by
    mistakes), `argmax_mean` and `argmax_weighted_mean`, `most_frequent`, and `per_bias` (bias value name -> JsdBias)."""

    bias_source: str | None
    variant: str | None
    min_wrong: int | None
    n_wrong: int | None
    mean: float | None
    weighted_mean: float | None
    argmax_mean: float | None
    argmax_weighted_mean: float | None
    most_frequent: JsdMostFrequent | None
    per_bias: Mapping[str, JsdBias]

    @classmethod
    def _from_section(cls, section: Mapping[str, Any] | None) -> Jsd | None:
        if section is None:
            return None
        frequent = section.get("most_frequent")
        return cls(
            bias_source=section.get("bias_source"),
            variant=section.get("variant"),
            min_wrong=section.get("min_wrong"),
            n_wrong=section.get("n_wrong"),
            mean=number_or_none(section.get("mean")),
            weighted_mean=number_or_none(section.get("weighted_mean")),
            argmax_mean=number_or_none(section.get("argmax_mean")),
            argmax_weighted_mean=number_or_none(section.get("argmax_weighted_mean")),
            most_frequent=JsdMostFrequent(
                bias=frequent.get("bias"),
                name=frequent.get("name"),
                soft=number_or_none(frequent.get("soft")),
                argmax=number_or_none(frequent.get("argmax")),
            )
            if frequent
            else None,
            per_bias=MappingProxyType(
                {name: JsdBias._from_entry(entry) for name, entry in (section.get("per_bias") or {}).items()}
            ),
        )
