"""`ba.open_tracker` and `ba.log`: results into MLflow or Weights & Biases (docs/trackers.md). The command line's
`--log` opens the tracker before the command's work (so a tracker not installed or a store that cannot be reached is
refused at once, nothing written) and logs the result after it, through the same Tracker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from biasaudit._core.arguments import checked
from biasaudit.integrations.tracking import TRACKERS, backend
from biasaudit.integrations.tracking import said as said  # the command line's words for a tracker's failure
from biasaudit.integrations.tracking_run import Tracker, TrackedRun, existing_files
from biasaudit.results import StrPath
from biasaudit.results.audit import Audit
from biasaudit.results.comparison import Comparison
from biasaudit.results.fix_result import FixResult
from biasaudit.results.gate_result import GateResult
from biasaudit.results.leaderboard_result import LeaderboardResult


def _tracker(value: Any) -> str | None:
    return None if value in TRACKERS else f"a tracker. Available: {', '.join(TRACKERS)}"


def _name(value: Any) -> str | None:
    return None if value is None or value.strip() else "a non-empty name, or None"


def _opened(to: str, *, where: str, experiment: str | None, run_name: str | None, tracking_uri: str | None) -> Tracker:
    chosen = backend(to, where=where, experiment=experiment, run_name=run_name, tracking_uri=tracking_uri)
    chosen.check()
    return Tracker(to, chosen)


@checked("ba.open_tracker", to=_tracker, experiment=_name, run_name=_name, tracking_uri=_name)
def open_tracker(
    to: str, *, experiment: str | None = None, run_name: str | None = None, tracking_uri: str | None = None
) -> Tracker:
    """Open the experiment tracker `to` ("mlflow" or "wandb") and check that it can log: installed (else InputError
    naming the extra: pip install "biasaudit[mlflow]"), its store reachable (MLflow) or its account usable (W&B online).
    Nothing is written until `Tracker.log`; use it as a context manager, or call `close()`.

    Parameters: `to`; `experiment` (the MLflow experiment, created when missing, or the W&B project; default
    MLFLOW_EXPERIMENT_NAME / WANDB_PROJECT); `run_name` (of the run the tracker starts); `tracking_uri` (MLflow's store,
    default MLFLOW_TRACKING_URI, else MLflow's own default; W&B reads WANDB_BASE_URL instead). A run active in this
    process (mlflow.active_run(), wandb.run) is logged into and left open.
    """
    return _opened(to, where="ba.open_tracker", experiment=experiment, run_name=run_name, tracking_uri=tracking_uri)


@checked("ba.log", to=_tracker, experiment=_name, run_name=_name, tracking_uri=_name, files=existing_files)
def log(
    result: Audit | FixResult | Comparison | GateResult | LeaderboardResult,
    *,
    to: str,
    experiment: str | None = None,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    files: Sequence[StrPath] | None = None,
) -> TrackedRun:
    """Log `result` (an Audit, FixResult, Comparison, GateResult or LeaderboardResult) to the tracker `to` ("mlflow" or
    "wandb") and return where it went: every condition's accuracy and the bias measures as flat metric keys with their
    interval ends (biasaudit/full/accuracy, biasaudit/bias/worst_group/full, ...; docs/trackers.md lists them), the
    settings as params (W&B: config), the verdict as a tag (W&B: summary), and `files` as artifacts (default: the
    result's own documents, e.g. audit.json and audit.html). The run: the active one, left open, else a new one, ended.

    Parameters: `result`; `to`; `experiment`, `run_name` and `tracking_uri` as `ba.open_tracker` takes them; `files`.
    """
    with _opened(to, where="ba.log", experiment=experiment, run_name=run_name, tracking_uri=tracking_uri) as tracker:
        return tracker.log(result, files=files)
