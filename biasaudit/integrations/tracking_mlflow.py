"""Logging biasaudit results to MLflow (pip install "biasaudit[mlflow]"): the backend of `ba.log(..., to="mlflow")`
and `--log mlflow`, and `metric_thresholds`, a gate verdict's rules as MLflow MetricThresholds.

The store is the one MLflow itself would use: `tracking_uri`, else MLFLOW_TRACKING_URI, else MLflow's default (MLflow
3: sqlite:///mlflow.db in the working directory, artifacts in ./mlruns). The run: the active one (mlflow.active_run(),
or MLFLOW_RUN_ID), left open; else a new run in the experiment named `experiment`, else MLFLOW_EXPERIMENT_NAME, else
MLFLOW_EXPERIMENT_ID, else MLflow's Default, ended when the tracker closes. Everything goes through an MlflowClient
of that store, so the process's own MLflow settings (set_tracking_uri, set_experiment) are left as they were.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from biasaudit._core.arguments import checked
from biasaudit.errors import InputError
from biasaudit.integrations.tracking import not_installed, said
from biasaudit.integrations.tracking_entries import gate_thresholds
from biasaudit.integrations.tracking_keys import Entry
from biasaudit.integrations.tracking_run import TrackedRun
from biasaudit.results.gate_result import GateResult

try:
    import mlflow
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.models import MetricThreshold
    from mlflow.tracking import MlflowClient
except ImportError:
    raise ImportError(str(not_installed("mlflow"))) from None

# The check before any work answers in seconds: one try, a short wait (a user's own settings of these are kept).
QUICK_REQUESTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits per call
ARTIFACT_FOLDER = "biasaudit"  # beside a reused run's own artifacts, never over them
MAX_TAG = 5000  # MLflow refuses longer tag values on some stores


@contextmanager
def _quick_requests() -> Iterator[None]:
    added = [name for name in QUICK_REQUESTS if name not in os.environ]
    os.environ.update({name: QUICK_REQUESTS[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def shown(uri: str) -> str:
    """A tracking URI as messages and logs show it: a password or token in it (http://user:token@host) is masked."""
    parts = urlsplit(uri)
    if parts.password is None and not (parts.username and parts.scheme.startswith("http")):
        return uri
    return urlunsplit(parts._replace(netloc=f"***@{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"))


def _failure(exc: BaseException) -> str:
    """Why a store cannot be used, as the end of one sentence: a network failure by its cause (the OSError at the
    bottom of MLflow's, requests' and urllib3's exceptions: "Connection refused"), anything else by MLflow's text."""
    deepest, seen = exc, {id(exc)}
    while (cause := deepest.__cause__ or deepest.__context__) is not None and id(cause) not in seen:
        deepest, seen = cause, seen | {id(cause)}
    if isinstance(deepest, OSError) and deepest is not exc:
        return f"cannot be reached ({deepest.strerror or said(deepest)})."
    return f"cannot be used: {said(exc)}."


KNOWN_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")


def _store_refused(uri: str, source: str, exc: BaseException) -> InputError:
    """Why the store at `uri` cannot be used, in one sentence: a file store (MLflow 3 refuses it, with a page of text)
    and a scheme MLflow does not know are named as such; anything else is MLflow's own answer."""
    scheme = urlsplit(uri).scheme.lower()
    scheme = "" if len(scheme) == 1 else scheme  # C:\\path on Windows is a path, not a scheme
    start = f"The MLflow tracking URI {shown(uri)}{source}"
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        return InputError(
            f"{start} is a file store, which MLflow 3 no longer supports: use a database such as sqlite:///PATH/mlflow.db "
            "(or set MLFLOW_ALLOW_FILE_STORE=true)."
        )
    if scheme not in KNOWN_SCHEMES:
        return InputError(
            f"{start} has the scheme {scheme!r}, which MLflow does not know: use e.g. sqlite:///mlflow.db or http://HOST:5000."
        )
    return InputError(f"{start} {_failure(exc)}")


def _outside_biasaudit() -> int:
    """The stacklevel, seen from the caller's warnings.warn, of the first frame outside the biasaudit package: a
    warning points at the user's line, not at the wrapper that checked the arguments."""
    root = str(Path(__file__).parents[1])
    frame: FrameType | None = sys._getframe(1)  # the frame that calls warnings.warn, at stacklevel 1
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(root):
        frame, level = frame.f_back, level + 1
    return level


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _RunMissing(Exception):
    """The store answered that MLFLOW_RUN_ID names no run (told apart from a store that cannot be used)."""


class MlflowBackend:
    def __init__(self, *, where: str, experiment: str | None, run_name: str | None, tracking_uri: str | None) -> None:
        self.experiment, self.run_name = experiment, run_name
        self.uri = tracking_uri or mlflow.get_tracking_uri()
        self.source = "" if tracking_uri or "MLFLOW_TRACKING_URI" not in os.environ else " (from MLFLOW_TRACKING_URI)"
        self.given_uri = tracking_uri
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.owned = False

    def check(self) -> None:
        """The store answers, and the experiment or run to log into can be used: before any work, in one sentence."""
        active = mlflow.active_run()
        if active is not None and self.given_uri is not None and self.given_uri != mlflow.get_tracking_uri():
            raise InputError(
                f"An MLflow run is active ({active.info.run_id}) in {shown(mlflow.get_tracking_uri())}, and the tracking URI "
                f"given is another store ({shown(self.given_uri)}); end that run, or leave the tracking URI out to log into it."
            )
        named = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        run_id = os.environ.get("MLFLOW_RUN_ID") if active is None else None
        # The experiment _run falls back on: a wrong ID would otherwise fail only in create_run, after the work.
        experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") if active is None and not run_id and not named else None
        found, missing = None, None
        try:
            with _quick_requests():
                self.client = MlflowClient(tracking_uri=self.uri)
                self.client.search_experiments(max_results=1)
                if named and active is None:
                    found = self.client.get_experiment_by_name(named)
                if run_id:
                    try:
                        self.client.get_run(run_id)
                    except MlflowException as exc:  # the store answered: no such run (or no valid ID)
                        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                            raise
                        raise _RunMissing(said(exc)) from None
                if experiment_id:
                    try:
                        found = self.client.get_experiment(experiment_id)
                    except MlflowException as exc:  # the store answered: no such experiment (or no valid ID)
                        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                            raise
                        missing = said(exc)
        except ModuleNotFoundError as exc:  # the sqlite store's sqlalchemy, or alembic
            needs = f"needs {exc.name}, which is not installed"
            raise InputError(
                f'The MLflow tracking URI {shown(self.uri)}{self.source} {needs}: pip install "biasaudit[mlflow]".'
            ) from None
        except _RunMissing as exc:
            raise InputError(
                f"MLFLOW_RUN_ID is {run_id!r}, which is no run in {shown(self.uri)} ({exc}); set it to an existing run's "
                "ID, or unset it to start a new run."
            ) from None
        except Exception as exc:  # a store that cannot be used answers with its own exception: any is that answer
            raise _store_refused(self.uri, self.source, exc) from None
        self._check_run_options(active, run_id)
        if missing is not None:
            raise InputError(
                f"MLFLOW_EXPERIMENT_ID is {experiment_id!r}, which is no experiment in {shown(self.uri)} ({missing}); "
                "set it to an existing experiment's ID, or name the experiment instead."
            )
        if found is not None and found.lifecycle_stage == "deleted":
            which = f"experiment {named!r}" if named else f"experiment {experiment_id!r} (MLFLOW_EXPERIMENT_ID)"
            raise InputError(f"The MLflow {which} is deleted in {shown(self.uri)}; restore it or name another.")

    def _check_run_options(self, active: Any, run_id: str | None) -> None:
        """An existing run (the active one, or MLFLOW_RUN_ID's) keeps its experiment and name: an `experiment` or
        `run_name` that differs would be silently ignored, so it is refused before any work."""
        if active is None and not run_id:
            return
        which = f"an MLflow run is active ({active.info.run_id})" if active is not None else f"MLFLOW_RUN_ID is {run_id!r}"
        info = active.info if active is not None else self.client.get_run(run_id).info
        if self.experiment is not None:
            held = self.client.get_experiment(info.experiment_id).name
            if held != self.experiment:
                raise InputError(
                    f"The experiment {self.experiment!r} was given, but {which}, a run of experiment {held!r} that the "
                    "result would go to: leave the experiment out, or end that run (unset MLFLOW_RUN_ID)."
                )
        if self.run_name is not None and info.run_name != self.run_name:
            raise InputError(
                f"The run name {self.run_name!r} was given, but {which}, a run named {info.run_name!r} that the result "
                "would go to: leave the run name out, or end that run (unset MLFLOW_RUN_ID)."
            )

    def _run(self) -> str:
        """The run to log into: the active one, MLFLOW_RUN_ID's, or a new one this backend owns."""
        if self.run_id is not None:
            return self.run_id
        active = mlflow.active_run()
        if active is not None or os.environ.get("MLFLOW_RUN_ID"):
            run = active if active is not None else self.client.get_run(os.environ["MLFLOW_RUN_ID"])
            self.run_id, self.experiment_id, self.owned = run.info.run_id, run.info.experiment_id, False
            return run.info.run_id
        named = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if named:
            found = self.client.get_experiment_by_name(named)
            self.experiment_id = found.experiment_id if found is not None else self.client.create_experiment(named)
        else:
            self.experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or "0"  # MLflow's Default experiment
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags={"mlflow.source.name": "biasaudit"})
        self.run_id, self.owned = run.info.run_id, True
        return run.info.run_id

    def log(self, entry: Entry, files: list[Path]) -> TrackedRun:
        run_id = self._run()
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, 0) for key, value in entry.metrics.items()]
        held = self.client.get_run(run_id).data.params
        # MLflow never changes a param: one already in the run (a second result logged there) is kept.
        clashing = [key for key, value in entry.params.items() if key in held and held[key] != str(value)]
        if clashing:
            warnings.warn(
                f"The MLflow run {run_id} keeps its params {', '.join(clashing)}: this {entry.kind} has other values, and "
                "MLflow never changes a param (log each result into its own run to keep both).",
                stacklevel=_outside_biasaudit(),
            )
        params = [Param(key, str(value)) for key, value in entry.params.items() if key not in held]
        tags = [RunTag(key, value[:MAX_TAG]) for key, value in entry.tags.items()]
        for chunk in _chunks(metrics, BATCH["metrics"]):
            self.client.log_batch(run_id, metrics=chunk)
        for chunk in _chunks(params, BATCH["params"]):
            self.client.log_batch(run_id, params=chunk)
        for chunk in _chunks(tags, BATCH["tags"]):
            self.client.log_batch(run_id, tags=chunk)
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_FOLDER)
        return TrackedRun(
            tracker="mlflow",
            run_id=run_id,
            experiment=self.experiment_id,
            location=shown(self.uri),
            metrics=tuple(entry.metrics),
            artifacts=tuple(path.name for path in files),
        )

    def end(self, *, failed: bool) -> None:
        if self.owned and self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
        self.run_id, self.owned = None, False


@checked("metric_thresholds")
def metric_thresholds(gate: GateResult) -> dict[str, MetricThreshold]:
    """The rules of the gate verdict `gate` as MLflow MetricThresholds, by the metric key each limits: validate a
    logged run with MLflow's own API (docs/trackers.md, "Gate rules as MLflow thresholds"):

        thresholds = metric_thresholds(ba.gate(audit, rules=rules))
        run = MlflowClient().get_run(run_id)
        mlflow.validate_evaluation_results(thresholds, EvaluationResult(metrics=run.data.metrics, artifacts={}))

    A single-audit rule limits the audit's key (min_accuracy[full] -> biasaudit/full/accuracy >= P): validate a scan's
    run. A baseline rule limits a change key (max_gap_increase[missing] -> biasaudit/change/reliance/gap/missing <= X):
    validate the run of a fix, or of a comparison against the baseline."""
    return {
        key: MetricThreshold(threshold=float(threshold), greater_is_better=better)
        for key, (threshold, better) in gate_thresholds(gate).items()
    }
