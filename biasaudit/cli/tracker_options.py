"""The options that log a command's result to an experiment tracker (docs/trackers.md), shared by scan, fix, compare,
gate and leaderboard: --log, --experiment, --run-name, --tracking-uri. `tracking` opens and checks the tracker before
the command's work (a tracker not installed, or a store that cannot be reached, exits 2 with nothing written or run);
`logged` logs the result once the command has written every output, with its files as artifacts, and ends the run
(a tracker failing then is a warning, and the command's exit code stays its own)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from biasaudit.api import TRACKER_NAMES
from biasaudit.cli.console import err
from biasaudit.cli.naming import COMMAND_LINE, DEFAULT, named_as

if TYPE_CHECKING:
    from biasaudit import Tracker

PANEL = "Experiment tracking"
# ba.open_tracker's and Tracker.log's keywords by the flags that set them.
FLAGS = {"to": "--log", "experiment": "--experiment", "run_name": "--run-name", "tracking_uri": "--tracking-uri"}
# `--log none` switches off a settings file's `log` for one run (e.g. a `scan --shard` of a pipeline that logs its scans).
OFF = "none"

Log = Annotated[
    str | None,
    typer.Option(
        "--log",
        metavar="|".join((*TRACKER_NAMES, OFF)),
        help="Log the result to an experiment tracker: every condition's accuracy and the bias measures as metrics, the "
        'settings as params, the verdict as a tag, the files written as artifacts (pip install "biasaudit[mlflow]" '
        'or "biasaudit[wandb]"). Checked before any work. none: log nothing, whatever the settings file\'s log says.',
        rich_help_panel=PANEL,
    ),
]
Experiment = Annotated[
    str | None,
    typer.Option(
        "--experiment",
        help="MLflow experiment (created when missing) or W&B project; default MLFLOW_EXPERIMENT_NAME or WANDB_PROJECT.",
        rich_help_panel=PANEL,
    ),
]
RunName = Annotated[str | None, typer.Option("--run-name", help="Name of the tracker's run.", rich_help_panel=PANEL)]
TrackingUri = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow's store, e.g. sqlite:///mlflow.db or http://host:5000; default MLFLOW_TRACKING_URI, else "
        "MLflow's own default. W&B reads WANDB_BASE_URL.",
        rich_help_panel=PANEL,
    ),
]


def wanted(log: str | None) -> bool:
    """Whether `log` (--log, or the settings file's `log`) asks for a tracker: `none` switches it off."""
    return log is not None and log != OFF


@contextmanager
def tracking(
    log: str | None,
    experiment: str | None,
    run_name: str | None,
    tracking_uri: str | None,
    *,
    sources: Mapping[str, str] | None = None,
    refused: str | None = None,
) -> Iterator[Tracker | None]:
    """The tracker of --log, opened and checked (None without --log, or with --log none); on leaving, the run it
    started is ended, as failed when the command failed. `refused` names a mode of the command that writes nothing to
    log (e.g. --shard)."""
    import biasaudit as ba
    from biasaudit.errors import InputError

    if not wanted(log):
        # A settings file may hold the tracker's options for the runs that add --log; the command line gives them for this one.
        options = {"experiment": experiment, "run_name": run_name, "tracking_uri": tracking_uri}
        given = [FLAGS[key] for key, value in options.items() if value and (sources or {}).get(key, COMMAND_LINE) == COMMAND_LINE]
        if given:
            raise InputError(f"{given[0]} says where --log writes; give --log {' or --log '.join(TRACKER_NAMES)} too.")
        yield None
        return
    # Named as the user spelled it: the flag, or the settings file's key `log`.
    origin = (sources or {}).get("log", COMMAND_LINE)
    label = "--log" if origin.startswith((COMMAND_LINE, DEFAULT)) else f"{origin} log"
    if refused is not None:
        if label == "--log":
            raise InputError(f"--log logs a result, and {refused}; log the finished result from Python with ba.log.")
        raise InputError(
            f"{label} = {log!r} logs a result, and {refused}; give --log {OFF} for this run, "
            "and log the finished result from Python with ba.log."
        )
    if log not in TRACKER_NAMES:
        raise InputError(f"{label} is {log!r}, which is no tracker. Available: {', '.join(TRACKER_NAMES)}.")
    with named_as(FLAGS, sources):
        tracker = ba.open_tracker(log, experiment=experiment, run_name=run_name, tracking_uri=tracking_uri)
    with tracker:
        yield tracker


def logged(tracker: Tracker | None, result: Any, files: Sequence[Path] | None = None, *, later: str) -> None:
    """Log `result` (with `files` as artifacts; None: its own documents) and end the run; say where it went. Called
    once the command has written every output: a tracker that fails now (a server gone since the check) is a warning,
    and the command's exit code stays its result's. `later` says how to log the written result from Python, with {to}
    where the tracker's name goes (e.g. "log it with ba.log(ba.Audit.read('out/audit.json'), to={to})")."""
    from biasaudit.api._log import said

    if tracker is None:
        return
    try:
        with named_as(FLAGS):
            run = tracker.log(result, files=files)
        tracker.close()
    except Exception as exc:  # any failure of the tracker's own; the results are on disk whatever it was
        with suppress(Exception):  # the run it started, if any, ends as failed; the warning below says the rest
            tracker.__exit__(type(exc), exc, exc.__traceback__)
        how = later.replace("{to}", repr(tracker.name))
        text = f"the result was not logged to {tracker.name} ({said(exc)}); it is written: {how}."
        err.print(f"[bold yellow]warning:[/] {escape(text)}", highlight=False)
        return
    err.print(f"logged to {run.tracker}: run {run.run_id} ({run.location})", markup=False, highlight=False)
