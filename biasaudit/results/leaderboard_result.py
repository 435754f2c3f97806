"""The result of `biasaudit.leaderboard`: which method to use (or none), why, and the document it wrote."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from biasaudit._core.arguments import checked
from biasaudit.results.estimate import Estimate, number_or_none


@dataclass(frozen=True)
class SeedSpread:
    """A measure over a method's seeds: the `mean` and the standard deviation `std` (None with fewer than two
    figures)."""

    mean: float | None
    std: float | None


@dataclass(frozen=True)
class SeedRun:
    """One training run of a method (a per-seed row of leaderboard.json): its `seed` (also the audits' scan seed),
    `run_id` (of its file set), `folder` (relative to the leaderboard's folder; its compare.html is the run's page),
    `values` (measure -> its value after the run, in points), `epoch_loss` (mean training loss per epoch) and
    `wall_time_s` (training and after-audit)."""

    seed: int
    run_id: str
    folder: str
    values: Mapping[str, float | None]
    epoch_loss: tuple[float | None, ...]
    wall_time_s: float | None

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any]) -> SeedRun:
        return cls(
            seed=int(entry["seed"]),
            run_id=entry["run_id"],
            folder=entry["folder"],
            values=MappingProxyType({name: number_or_none(v) for name, v in (entry.get("values") or {}).items()}),
            epoch_loss=tuple(number_or_none(v) for v in entry.get("epoch_loss") or ()),
            wall_time_s=number_or_none(entry.get("wall_time_s")),
        )


@dataclass(frozen=True)
class PooledChange:
    """A measure's change against the control, paired seed by seed: `change` (the mean over seeds, with the interval of
    the hierarchical bootstrap over seeds and samples), `seed_deltas` (each seed's change), `seed_spread` (their standard
    deviation), `significant` (the interval excludes zero) and `why_no_interval` (None when there is one)."""

    change: Estimate
    seed_deltas: tuple[float | None, ...]
    seed_spread: float | None
    significant: bool
    why_no_interval: str | None


@dataclass(frozen=True)
class MethodResult:
    """One method of a leaderboard: whether it is the `control` or the `recommended` one, the `sentence` that says why,
    per measure its figures over seeds (`values`) and its change against the control pooled over seeds and samples
    (`changes`: an Estimate with the hierarchical-bootstrap interval; `seed_deltas`: each seed's change; `pooled`: the
    whole PooledChange), its runs (`seeds`: one SeedRun per seed, in the settings' order), the option each seed's run
    chose on validation data (`options`, as written, or None), the `kept_checkpoint`, and why a kept checkpoint is
    missing (`kept_note`) or how the kept seed was chosen (`kept_chosen_on`), None otherwise. `method` is its name."""

    method: str
    control: bool
    recommended: bool
    sentence: str
    values: Mapping[str, SeedSpread]
    changes: Mapping[str, Estimate]
    seed_deltas: Mapping[str, tuple[float, ...]]
    options: Mapping[str, Any] | None
    kept_checkpoint: str | None
    seeds: tuple[SeedRun, ...]
    pooled: Mapping[str, PooledChange]
    kept_note: str | None
    kept_chosen_on: str | None

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any]) -> MethodResult:
        changes = entry.get("changes") or {}

        def pooled(c: Mapping[str, Any]) -> PooledChange:
            return PooledChange(
                change=Estimate._of(c.get("delta"), c.get("interval")),
                seed_deltas=tuple(number_or_none(v) for v in c.get("seed_deltas") or ()),
                seed_spread=number_or_none(c.get("seed_spread")),
                significant=bool(c.get("significant")),
                why_no_interval=c.get("why_no_interval"),
            )

        return cls(
            method=entry["method"],
            control=bool(entry.get("control")),
            recommended=bool(entry.get("recommended")),
            sentence=entry.get("sentence") or "",
            values=MappingProxyType(
                {name: SeedSpread(v.get("mean"), v.get("std")) for name, v in (entry.get("values") or {}).items()}
            ),
            changes=MappingProxyType({name: Estimate._of(c.get("delta"), c.get("interval")) for name, c in changes.items()}),
            seed_deltas=MappingProxyType({name: tuple(c.get("seed_deltas") or ()) for name, c in changes.items()}),
            options=MappingProxyType(dict(entry["options"])) if entry.get("options") else None,
            kept_checkpoint=entry.get("kept_checkpoint"),
            seeds=tuple(SeedRun._from_entry(run) for run in entry.get("seeds") or ()),
            pooled=MappingProxyType({name: pooled(c) for name, c in changes.items()}),
            kept_note=entry.get("kept_note"),
            kept_chosen_on=entry.get("kept_chosen_on"),
        )


@dataclass(frozen=True)
class Measure:
    """A measure the leaderboard compares: its `name` (full, worst_group, bias_balanced, ood, follow_rate, gap), `label`
    in plain words, which direction is `better` (higher, lower; None for reliance) and its `kind` (accuracy, bias or
    reliance)."""

    name: str
    label: str
    better: str | None
    kind: str


@dataclass(frozen=True)
class ShardRun:
    """One run a shard finished (a row of its record): `method`, `seed` and the `run_id` of its file set."""

    method: str
    seed: int
    run_id: str


@dataclass(frozen=True)
class LeaderboardResult:
    """`recommended`: the method the do-no-harm rule picks, None when no method helps here; `verdict`: the one line that
    says which and why; `reasons`: one sentence per method, with its figures and intervals; `document`: the whole
    leaderboard.json (`to_dict()`); `json_path`, `html_path`: where it was written (a shard's run: its record, and no page).
    Typed views of the document: `methods` (name -> MethodResult, with each seed's run), `measures`, `split`, `ood`,
    `carrier` and, for a shard's record, `runs`."""

    recommended: str | None
    verdict: str
    reasons: tuple[str, ...]
    json_path: Path
    html_path: Path | None
    document: Mapping[str, Any] = field(repr=False)

    @property
    def methods(self) -> Mapping[str, MethodResult]:
        """Each method's typed entry, by name (the control first), e.g. `result.methods["balgrad"].changes["worst_group"]`;
        empty for a shard's result, which holds runs, not methods."""
        return MappingProxyType(
            {entry["method"]: MethodResult._from_entry(entry) for entry in self.document.get("methods") or []}
        )

    @property
    def measures(self) -> tuple[Measure, ...]:
        """The measures compared, in table order (empty for a shard's result)."""
        return tuple(
            Measure(name=m["name"], label=m["label"], better=m.get("better"), kind=m["kind"])
            for m in self.document.get("measures") or []
        )

    @property
    def split(self) -> str | None:
        """The evaluation split every run was audited on (None for a shard's result)."""
        split: str | None = self.document.get("split")
        return split

    @property
    def ood(self) -> bool | None:
        """True when the evaluation split is out of distribution for the bias (None for a shard's result)."""
        ood: bool | None = self.document.get("ood")
        return ood

    @property
    def carrier(self) -> str | None:
        """The starting model's carrier modality, whose bias-follow rate is a measure; None when none was found."""
        carrier: str | None = self.document.get("carrier")
        return carrier

    @property
    def runs(self) -> tuple[ShardRun, ...]:
        """A shard's finished runs (empty for a whole leaderboard, whose runs are each method's `seeds`)."""
        return tuple(
            ShardRun(method=r["method"], seed=int(r["seed"]), run_id=r["run_id"]) for r in self.document.get("runs") or []
        )

    @checked("LeaderboardResult.to_dict")
    def to_dict(self) -> dict[str, Any]:
        return dict(self.document)

    def __repr__(self) -> str:
        return f"LeaderboardResult(recommended={self.recommended!r}, verdict={self.verdict!r}, methods={list(self.methods)!r})"

    def _repr_html_(self) -> str:
        """A notebook's view: the verdict and each method's changes against the control."""
        from biasaudit.report.notebook import leaderboard_html

        return leaderboard_html(self)
