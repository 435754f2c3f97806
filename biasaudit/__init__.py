"""biasaudit: find, measure and fix modality bias in multimodal PyTorch classifiers."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

# Standard logging, off unless the application configures it (e.g. logging.basicConfig(level=logging.INFO)): the
# library logs only at INFO and DEBUG under the "biasaudit" logger, and never prints.
logging.getLogger("biasaudit").addHandler(logging.NullHandler())

__version__ = "0.1.0"
__all__ = [
    "Adapter",
    "Audit",
    "BiasAuditError",
    "BiasChanges",
    "BiasMeasures",
    "Calibration",
    "Ceilings",
    "Change",
    "Comparison",
    "ConditionChange",
    "ConditionResult",
    "Dataset",
    "Embeddings",
    "Estimate",
    "FixResult",
    "GapSummary",
    "GateChanges",
    "GateResult",
    "GateRules",
    "GradientConflict",
    "GroupChange",
    "Groups",
    "Interaction",
    "Jsd",
    "LeaderboardResult",
    "MeasureChange",
    "MethodResult",
    "Modality",
    "PooledChange",
    "RuleFigures",
    "RuleResult",
    "RunManifest",
    "SeedRun",
    "Shapley",
    "Summary",
    "TrackedRun",
    "Tracker",
    "__version__",
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

# Every public name, by the module that defines it. They are imported on first use (PEP 562), not here: importing any
# part of the package, the command line included, runs this file, and the API brings in torch and scikit-learn (seconds
# of CPU that `biasaudit --help` should not pay). `import biasaudit as ba; ba.scan(...)` and `from biasaudit import
# Audit` work as before.
_PUBLIC = {
    "biasaudit.api": (
        "scan",
        "scan_shard",
        "merge",
        "fix",
        "leaderboard",
        "merge_leaderboard",
        "compare",
        "gate",
        "load_adapter",
        "demo",
        "log",
        "open_tracker",
    ),
    "biasaudit.data.adapter": ("Adapter", "Modality"),
    "biasaudit.errors": ("BiasAuditError",),
    "biasaudit.gating": ("GateRules",),
    "biasaudit.integrations.tracking_run": ("Tracker", "TrackedRun"),
    "biasaudit.results.audit": ("Audit", "ConditionResult", "GapSummary", "Summary"),
    "biasaudit.results.bias": ("BiasMeasures", "Calibration", "Ceilings"),
    "biasaudit.results.analyses": ("Groups", "Shapley", "Interaction"),
    "biasaudit.results.sections": ("Jsd", "RunManifest", "Dataset"),
    "biasaudit.results.internals": ("Embeddings", "GradientConflict"),
    "biasaudit.results.comparison": ("BiasChanges", "Change", "Comparison", "ConditionChange", "GroupChange"),
    "biasaudit.results.estimate": ("Estimate",),
    "biasaudit.results.fix_result": ("FixResult",),
    "biasaudit.results.gate_result": ("GateChanges", "GateResult", "MeasureChange", "RuleResult", "RuleFigures"),
    "biasaudit.results.leaderboard_result": ("LeaderboardResult", "MethodResult", "SeedRun", "PooledChange"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'biasaudit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # the names as static analysis and IDEs see them
    from biasaudit.api import (
        compare,
        demo,
        fix,
        gate,
        leaderboard,
        load_adapter,
        log,
        merge,
        merge_leaderboard,
        open_tracker,
        scan,
        scan_shard,
    )
    from biasaudit.data.adapter import Adapter, Modality
    from biasaudit.errors import BiasAuditError
    from biasaudit.gating import GateRules
    from biasaudit.integrations.tracking_run import TrackedRun, Tracker
    from biasaudit.results.analyses import Groups, Interaction, Shapley
    from biasaudit.results.audit import Audit, ConditionResult, GapSummary, Summary
    from biasaudit.results.bias import BiasMeasures, Calibration, Ceilings
    from biasaudit.results.comparison import BiasChanges, Change, Comparison, ConditionChange, GroupChange
    from biasaudit.results.estimate import Estimate
    from biasaudit.results.fix_result import FixResult
    from biasaudit.results.gate_result import GateChanges, GateResult, MeasureChange, RuleFigures, RuleResult
    from biasaudit.results.leaderboard_result import LeaderboardResult, MethodResult, PooledChange, SeedRun
    from biasaudit.results.internals import Embeddings, GradientConflict
    from biasaudit.results.sections import Dataset, Jsd, RunManifest
