"""The experiment trackers biasaudit logs its results to (pip install "biasaudit[mlflow]" or "biasaudit[wandb]"), in one
explicit registry. This module imports no tracker and nothing heavy: the command line reads the names for its help
before any command runs, and `import biasaudit` works without either tracker installed.

    tracking.py          TRACKERS (name -> its backend and extra) and `backend`, which imports one
    tracking_keys.py     what a result becomes in a tracker: flat metric keys, params, tags, tables (docs/trackers.md)
    tracking_run.py      Tracker, the object `ba.open_tracker` returns, and TrackedRun, what a log returns
    tracking_mlflow.py   MLflow: the run, its metrics, params, tags and artifacts; the gate's rules as MetricThresholds
    tracking_wandb.py    Weights & Biases: the run, its history, summary, config, wandb.Html, wandb.Table, artifacts

A backend is a class built with the tracker's options (`experiment`, `run_name`, `tracking_uri`) that imports its
tracker and checks it can log (`check`, before any work), then logs entries into one run (`log`) and ends the run it
started (`end`). A new tracker is one module and one line below.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from biasaudit.errors import InputError

if TYPE_CHECKING:
    from biasaudit.integrations.tracking_keys import Entry
    from biasaudit.integrations.tracking_run import TrackedRun


@dataclass(frozen=True)
class Registered:
    backend: str  # "module:Class", imported on first use
    extra: str  # the optional dependency group that installs the tracker: pip install "biasaudit[extra]"
    module: str  # the tracker's own top-level module, whose absence names the extra


TRACKERS: dict[str, Registered] = {
    "mlflow": Registered("biasaudit.integrations.tracking_mlflow:MlflowBackend", "mlflow", "mlflow"),
    "wandb": Registered("biasaudit.integrations.tracking_wandb:WandbBackend", "wandb", "wandb"),
}
TRACKER_NAMES = tuple(TRACKERS)


class Backend(Protocol):
    """What a tracker module implements (see the module docstring)."""

    def check(self) -> None: ...

    def log(self, entry: Entry, files: list[Path]) -> TrackedRun: ...

    def end(self, *, failed: bool) -> None: ...


def not_installed(name: str) -> InputError:
    extra = TRACKERS[name].extra
    return InputError(f'Logging to {name} needs the {name} package, which is not installed: pip install "biasaudit[{extra}]".')


def said(exc: BaseException, *, limit: int = 240) -> str:
    """What a tracker's exception says, as the end of one of our sentences: on one line, without a final period, a
    password or token in a URL masked (http://user:token@host -> http://***@host, as CI logs keep every error), and cut
    at `limit` characters (a server may answer with a whole page)."""
    text = re.sub(r"//[^/\s@]+@", "//***@", " ".join(str(exc).split())).rstrip(".") or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def backend(name: str, *, where: str, experiment: str | None, run_name: str | None, tracking_uri: str | None) -> Backend:
    """The backend of tracker `name` (a name of TRACKERS: ba.open_tracker's and --log's checks have refused any other),
    built with the options; a tracker not installed is one sentence naming the extra to install. `where` names the
    call whose parameters a backend's own refusal names."""
    registered = TRACKERS[name]
    try:
        importlib.import_module(registered.module)
    except ImportError:  # also a module set to None in sys.modules, as a broken install leaves it
        raise not_installed(name) from None
    module, _, attribute = registered.backend.partition(":")
    built: Backend = getattr(importlib.import_module(module), attribute)(
        where=where, experiment=experiment, run_name=run_name, tracking_uri=tracking_uri
    )
    return built
