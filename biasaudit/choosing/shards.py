"""A leaderboard split over a job array: `--shard I/N` trains every N-th (method, seed) run from the I-th, in the
order methods x seeds, and writes `shard-I-of-N.json` (which runs it holds, under which settings) instead of the
document; `biasaudit merge` (merging.py) writes the document from every shard's folder. Shards may share one folder
(a shared filesystem) or each have their own: every run is a set of files of its own (runs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Mapping

from biasaudit.choosing.runs import LeaderboardSettings
from biasaudit.results import write_json_atomic
from biasaudit._core.sharding import Shard

SCHEMA = "biasaudit.leaderboard-shard"


def shard_runs(settings: LeaderboardSettings, shard: Shard | None) -> list[tuple[str, int]]:
    """The (method, seed) runs of `shard` (all of them without one). Methods x seeds, every N-th: the control's and each
    method's seeds spread over the shards, so no shard holds only the slow methods."""
    pairs = [(method, seed) for method in settings.methods for seed in settings.seeds]
    return pairs if shard is None else [pair for i, pair in enumerate(pairs) if i % shard.count == shard.index]


def record_name(shard: Shard) -> str:
    return f"shard-{shard.index}-of-{shard.count}.json"


def write_shard_record(
    out: Path,
    shard: Shard,
    settings: LeaderboardSettings,
    runs: Mapping[tuple[str, int], Mapping[str, Any]],
    *,
    manifest: Mapping[str, Any],
    also_split: str | None,
) -> dict[str, Any]:
    """The shard's record, written once its runs are all finished: what merge checks and reads."""
    record = {
        "schema": SCHEMA,
        "schema_version": 1,
        "shard": {"index": shard.index, "count": shard.count},
        "settings": settings.fingerprint(),
        "also_split": also_split,
        "runs": [{"method": method, "seed": seed, "run_id": run["run_id"]} for (method, seed), run in runs.items()],
        "manifest": dict(manifest),
    }
    write_json_atomic(record, out / record_name(shard))
    return record
