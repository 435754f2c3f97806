"""The result of `biasaudit.leaderboard`: which method to use (or none), why, and the document it wrote."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from biasaudit._core.arguments import checked
from biasaudit.results.estimate import Estimate


@dataclass(frozen=True)
class SeedSpread:
    """A measure over a method's seeds: the mean and the standard deviation (None with fewer than two figures)."""

    mean: float | None
    std: float | None


@dataclass(frozen=True)
class MethodResult:
    """One method of a leaderboard: whether it is the control or the recommended one, the sentence that says why,
    per measure its figures over seeds (`values`) and its change against the control pooled over seeds and samples
    (`changes`: an Estimate with the hierarchical-bootstrap interval; `seed_deltas`: each seed's change), the option
    each seed's run chose on validation data (`options`, or None) and the kept checkpoint."""

    method: str
    control: bool
    recommended: bool
    sentence: str
    values: Mapping[str, SeedSpread]
    changes: Mapping[str, Estimate]
    seed_deltas: Mapping[str, tuple[float, ...]]
    options: Mapping[str, Any] | None
    kept_checkpoint: str | None

    @classmethod
    def _from_entry(cls, entry: Mapping[str, Any]) -> MethodResult:
        changes = entry.get("changes") or {}
        return cls(method=entry["method"], control=bool(entry.get("control")), recommended=bool(entry.get("recommended")),
                   sentence=entry.get("sentence") or "",
                   values=MappingProxyType({name: SeedSpread(v.get("mean"), v.get("std"))
                                            for name, v in (entry.get("values") or {}).items()}),
                   changes=MappingProxyType({name: Estimate._of(c.get("delta"), c.get("interval"))
                                             for name, c in changes.items()}),
                   seed_deltas=MappingProxyType({name: tuple(c.get("seed_deltas") or ()) for name, c in changes.items()}),
                   options=MappingProxyType(dict(entry["options"])) if entry.get("options") else None,
                   kept_checkpoint=entry.get("kept_checkpoint"))


@dataclass(frozen=True)
class LeaderboardResult:
    """`recommended`: the method the do-no-harm rule picks, None when no method helps here; `verdict`: the one line that
    says which and why; `reasons`: one sentence per method, with its figures and intervals; `document`: the whole
    leaderboard.json (`to_dict()`); `json_path`, `html_path`: where it was written (a shard's run: its record, and no page)."""

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
        return MappingProxyType({entry["method"]: MethodResult._from_entry(entry)
                                 for entry in self.document.get("methods") or []})

    @checked("LeaderboardResult.to_dict")
    def to_dict(self) -> dict[str, Any]:
        return dict(self.document)
