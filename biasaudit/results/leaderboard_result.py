"""The result of `biasaudit.leaderboard`: which method to use (or none), why, and the document it wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from biasaudit.arguments import checked


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

    @checked("LeaderboardResult.to_dict")
    def to_dict(self) -> dict[str, Any]:
        return dict(self.document)
