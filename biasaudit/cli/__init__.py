"""The command line: a thin shell over the public API, one module per command (app.py holds the typer app,
console.py the only printing and the exit codes)."""

from __future__ import annotations

import importlib

from biasaudit.cli.app import app
from biasaudit.cli.console import summary_table

__all__ = ["app", "main", "summary_table"]

# Each module registers its command on the app, in the order `biasaudit --help` lists them.
for _command in ("scan", "merge", "fix", "compare", "report", "gate", "demo"):
    importlib.import_module(f"biasaudit.cli.{_command}")


def main() -> None:
    app()
