"""The command line: a thin shell over the public API, one module per command (app.py holds the typer app,
console.py the only printing and the exit codes)."""

from __future__ import annotations

import importlib
import signal

from biasaudit.cli.app import app
from biasaudit.cli.console import summary_table

__all__ = ["app", "main", "summary_table"]

# Each module registers its command on the app, in the order `biasaudit --help` lists them.
for _command in ("scan", "merge", "fix", "leaderboard", "compare", "report", "gate", "demo"):
    importlib.import_module(f"biasaudit.cli.{_command}")


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # CI time-outs, Slurm, `timeout` and torchrun's agent stop a run with SIGTERM: it gets Ctrl-C's clean-up and message
    # (console.handled, biasaudit._core.output_set), rather than dying with its output directory half made.
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    app()
