"""`biasaudit merge` of a sharded leaderboard: the document one process would have written, from the folders of every
shard (`biasaudit leaderboard --shard I/N`). No model, adapter or training: the runs' audits and train logs are
read back, checked to be one leaderboard's (the same settings, every shard's record, every run finished with the run
id its shard recorded), copied into the output folder when it is not one of the shards', and pooled as
run_leaderboard pools them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from collections.abc import Sequence

from biasaudit.choosing.document import write_document
from biasaudit.choosing.runs import LeaderboardSettings, finished_run, run_dir
from biasaudit.choosing.shards import SCHEMA, shard_runs
from biasaudit.errors import InputError
from biasaudit._core.output_paths import check_output_dir


def is_leaderboard_folder(path: str | os.PathLike) -> bool:
    """A folder a leaderboard (or one of its shards) wrote into."""
    return Path(path).is_dir() and (Path(path) / "settings.json").is_file()


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} cannot be read as {what} ({type(exc).__name__}); rerun the shard that wrote it.") from exc


def merge_leaderboard(folders: Sequence[str | os.PathLike], *, out: str | os.PathLike) -> dict[str, Any]:
    """Write leaderboard.json and leaderboard.html into `out` from the shards' folders; returns the document."""
    shard_dirs = [Path(f) for f in folders]
    if not shard_dirs:
        raise InputError(
            "merge needs the folders of a sharded leaderboard's shards (biasaudit leaderboard --shard I/N --out DIR)."
        )
    for folder in shard_dirs:
        if not is_leaderboard_folder(folder):
            raise InputError(
                f"{folder} is not a leaderboard's folder (no settings.json); name the --out folders of "
                "`biasaudit leaderboard --shard I/N`."
            )
    first = _read(shard_dirs[0] / "settings.json", "leaderboard settings")
    for folder in shard_dirs[1:]:
        other = _read(folder / "settings.json", "leaderboard settings")
        different = [key for key in first if first.get(key) != other.get(key)]
        if different:
            changes = "; ".join(f"{key} {first.get(key)!r} -> {other.get(key)!r}" for key in different)
            raise InputError(
                f"{folder} holds a leaderboard with other settings than {shard_dirs[0]} ({changes}); merge the shards of "
                "one leaderboard."
            )
    settings = LeaderboardSettings.from_dict(first)
    records = {}
    for folder in dict.fromkeys(shard_dirs):
        for path in sorted(folder.glob("shard-*-of-*.json")):
            record = _read(path, "a leaderboard shard's record")
            if record.get("schema") != SCHEMA or record.get("settings") != settings.fingerprint():
                raise InputError(
                    f"{path} is the record of another leaderboard's shard (other settings); merge the shards of one leaderboard."
                )
            records[record["shard"]["index"], record["shard"]["count"]] = (folder, record)
    counts = {count for _, count in records}
    if len(counts) != 1:
        raise InputError(
            "merge found no shard records (shard-I-of-N.json) in the folders given: a shard writes its record when "
            "all its runs have finished."
            if not counts
            else f"merge found shard records of {' and '.join(map(str, sorted(counts)))} shards; merge the shards of one split."
        )
    count = counts.pop()
    missing = [index for index in range(count) if (index, count) not in records]
    if missing:
        raise InputError(
            f"Shard {', '.join(f'{i}/{count}' for i in missing)} has no record in the folders given: it has not "
            "finished, or its folder was not named; rerun it (the same command continues it) and merge again."
        )
    also = next(iter(records.values()))[1].get("also_split")
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    sources: dict[tuple[str, int], Path] = {}
    for (index, _), (folder, record) in sorted(records.items()):
        for entry in record["runs"]:
            method, seed = entry["method"], entry["seed"]
            found = finished_run(folder, settings, method, seed, also_split=also)
            if found is None or found["run_id"] != entry["run_id"]:
                raise InputError(
                    f"The run of {method} seed {seed} in {run_dir(folder, method, seed)} is missing or was rewritten after "
                    f"shard {index}/{count} recorded it; rerun that shard and merge again."
                )
            runs[method, seed], sources[method, seed] = found, folder
    absent = [pair for pair in shard_runs(settings, None) if pair not in runs]
    if absent:
        raise InputError(
            f"No shard holds the run of {absent[0][0]} seed {absent[0][1]}; the shards' records do not cover the "
            "leaderboard's methods and seeds."
        )
    target = check_output_dir(out)
    if (target / "settings.json").is_file() and _read(target / "settings.json", "leaderboard settings") != first:
        raise InputError(
            f"--out {target} holds another leaderboard (other settings.json); merge into a new folder or one of the "
            "shards' folders."
        )
    _gather(target, shard_dirs[0], sources)
    start = _read(target / "before" / f"seed-{settings.seeds[0]}.json", "the starting model's audit")
    manifests = [record["manifest"] for _, (_, record) in sorted(records.items())]
    manifest = {**manifests[0], "wall_time_s": round(sum(m.get("wall_time_s") or 0.0 for m in manifests), 3), "shards": count}
    return write_document(target, settings, runs, start=start, also=also, manifest=manifest)


def _gather(target: Path, first: Path, sources: dict[tuple[str, int], Path]) -> None:
    """Copy what the document's folder needs (settings, starting audits, runs) from the shards' folders, unless a shard
    wrote there itself."""
    target.mkdir(parents=True, exist_ok=True)
    if not (target / "settings.json").is_file():
        shutil.copy2(first / "settings.json", target / "settings.json")
    if (first / "before").is_dir() and target.resolve() != first.resolve():
        shutil.copytree(first / "before", target / "before", dirs_exist_ok=True)
    for (method, seed), folder in sources.items():
        if folder.resolve() != target.resolve():
            shutil.copytree(run_dir(folder, method, seed), run_dir(target, method, seed), dirs_exist_ok=True)


__all__ = ["is_leaderboard_folder", "merge_leaderboard"]
