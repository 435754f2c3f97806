"""`Tracker`, what `ba.open_tracker` returns: an experiment tracker checked before any work and logging results into
one run; `TrackedRun`, where a result went. `ba.log` is `open_tracker` and one `Tracker.log`: one code path."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from biasaudit._core.arguments import checked
from biasaudit.errors import InputError
from biasaudit.integrations.tracking import Backend
from biasaudit.results import StrPath
from biasaudit.results.audit import Audit
from biasaudit.results.comparison import Comparison
from biasaudit.results.fix_result import FixResult
from biasaudit.results.gate_result import GateResult
from biasaudit.results.leaderboard_result import LeaderboardResult


@dataclass(frozen=True)
class TrackedRun:
    """Where a result was logged: `tracker` (mlflow or wandb), `run_id`, `experiment` (the MLflow experiment's id or the
    W&B project), `location` (MLflow: the tracking URI; W&B: the run's page, or its folder when offline), `metrics`
    (every metric key logged, docs/trackers.md) and `artifacts` (the names of the files attached)."""

    tracker: str
    run_id: str
    experiment: str | None
    location: str
    metrics: tuple[str, ...]
    artifacts: tuple[str, ...]


def existing_files(value: Any) -> str | None:
    """A value rule: None, or a list of paths of files that exist (a single path is a common slip: it names it)."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return f"a list of paths, e.g. [{str(value)!r}]"
    missing = [str(path) for path in value if not Path(path).is_file()]
    return f"a list of existing files ({missing[0]} is not one)" if missing else None


def documents(result: Audit | FixResult | Comparison | GateResult | LeaderboardResult, folder: Path) -> list[Path]:
    """The result's own documents, written into `folder` (a leaderboard's are the ones it wrote): what a run attaches
    when no files are given."""
    if isinstance(result, Audit):
        return [result.to_json(folder / "audit.json"), result.to_html(folder / "audit.html")]
    if isinstance(result, Comparison):
        return [result.to_json(folder / "compare.json")]
    if isinstance(result, GateResult):
        (folder / "gate.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        (folder / "gate.md").write_text(result.to_markdown(), encoding="utf-8")
        return [folder / "gate.json", folder / "gate.md"]
    if isinstance(result, LeaderboardResult):
        return [Path(path) for path in (result.json_path, result.html_path) if path is not None and Path(path).is_file()]
    return [
        result.before.to_json(folder / "before.json"),
        result.after.to_json(folder / "after.json"),
        result.after.to_html(folder / "after.html"),
        result.comparison.to_json(folder / "compare.json"),
    ]


class Tracker:
    """An experiment tracker, `name` mlflow or wandb, opened by `ba.open_tracker`: installed and reachable (checked when
    opened, before any work), not yet holding a run. `log` logs a result into its run: the run active in this process
    when there is one (mlflow.active_run(), wandb.run; left open), else one started at the first log and ended by
    `close`. As a context manager it closes on leaving the block, marking the run it started failed when an exception
    left the block."""

    def __init__(self, name: str, backend: Backend) -> None:
        self.name = name
        self._backend = backend
        self._closed = False

    def __repr__(self) -> str:
        return f"Tracker({self.name!r}{', closed' if self._closed else ''})"

    @checked("Tracker.log", files=existing_files)
    def log(
        self,
        result: Audit | FixResult | Comparison | GateResult | LeaderboardResult,
        *,
        files: Sequence[StrPath] | None = None,
    ) -> TrackedRun:
        """Log `result` (an Audit, FixResult, Comparison, GateResult or LeaderboardResult): its figures as metrics, its
        settings as params, its verdict as a tag (W&B: in the summary), its tables, and `files` as artifacts (default:
        the result's own documents, e.g. audit.json and audit.html, written for the purpose). Returns where it went."""
        from biasaudit.integrations.tracking_entries import entry_of

        if self._closed:
            raise InputError(f"This {self.name} tracker is closed; open another with ba.open_tracker.")
        entry = entry_of(result)
        if files is not None:
            return self._backend.log(entry, [Path(path) for path in files])
        with tempfile.TemporaryDirectory(prefix="biasaudit-log-") as folder:
            return self._backend.log(entry, documents(result, Path(folder)))

    @checked("Tracker.close")
    def close(self) -> None:
        """End the run this tracker started (an active run it used is left open); later logs are refused."""
        self._end(failed=False)

    def _end(self, *, failed: bool) -> None:
        if not self._closed:
            self._closed = True
            self._backend.end(failed=failed)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self._end(failed=kind is not None)
