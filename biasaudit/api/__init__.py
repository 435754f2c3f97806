"""The public Python API: what `import biasaudit as ba` offers. The command line is a thin shell over these calls: every
command is one of them plus argument parsing and printing (tests/test_cli_api_equivalence.py).

  scan, scan_shard, load_adapter   _scan.py, _shard.py   audit a model or a checkpoint (or one shard of it)
  merge, compare, gate             _documents.py         over written results, without a model
  fix                              _fix.py               retrain with a method and prove the change
  leaderboard, merge_leaderboard   _board.py             every method against the control over seeds
  demo                             _demo.py              the bundled offline story
  log, open_tracker                _log.py               results into MLflow or Weights & Biases
  _names.py                        the names the calls accept, for help texts (imports nothing heavy)

The calls are imported on first use (PEP 562), as the package's own names are: the command line imports this package
to build its help, which must not pay for torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The trackers `--log` offers, from their registry (which imports no tracker), for the command line's help.
from biasaudit.integrations.tracking import TRACKER_NAMES as TRACKER_NAMES

__all__ = [
    "compare",
    "demo",
    "fix",
    "gate",
    "leaderboard",
    "load_adapter",
    "log",
    "merge",
    "merge_leaderboard",
    "open_tracker",
    "scan",
    "scan_shard",
]

_MODULE_OF = {
    "scan": "_scan",
    "load_adapter": "_scan",
    "_settings": "_scan",
    "scan_shard": "_shard",
    "fix": "_fix",
    "leaderboard": "_board",
    "merge_leaderboard": "_board",
    "compare": "_documents",
    "gate": "_documents",
    "merge": "_documents",
    "demo": "_demo",
    "log": "_log",
    "open_tracker": "_log",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'biasaudit.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"biasaudit.api.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from biasaudit.api._board import leaderboard as leaderboard
    from biasaudit.api._board import merge_leaderboard as merge_leaderboard
    from biasaudit.api._demo import demo as demo
    from biasaudit.api._documents import compare as compare
    from biasaudit.api._documents import gate as gate
    from biasaudit.api._documents import merge as merge
    from biasaudit.api._fix import fix as fix
    from biasaudit.api._log import log as log
    from biasaudit.api._log import open_tracker as open_tracker
    from biasaudit.api._scan import load_adapter as load_adapter
    from biasaudit.api._scan import scan as scan
    from biasaudit.api._shard import scan_shard as scan_shard
