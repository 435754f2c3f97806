"""The names the public calls accept and how the command line spells and checks them, for help texts and settings
files. Nothing here imports torch or scikit-learn: every command's options are built from it before any command runs,
and `biasaudit --help` must answer at once (tests/test_cli_startup.py)."""

from __future__ import annotations

from typing import Any

from biasaudit.gating.registry import OPTIONS as GATE_OPTIONS
from biasaudit.gating.registry import RULES as GATE_RULES
from biasaudit.gating.registry import parse_limits
from biasaudit.scanning.conditions import DEFAULT_DIAGNOSTICS, DIAGNOSTICS, GROUPS
from biasaudit.training.methods import METHODS as METHOD_REGISTRY

__all__ = ["CONDITION_GROUPS", "DEFAULT_DIAGNOSTICS", "DIAGNOSTICS", "FIX_METHODS", "GATE_OPTIONS", "GATE_RULES", "gate_limits"]

FIX_METHODS = tuple(METHOD_REGISTRY)  # `fix`'s methods (method="mmdb"), in registry order
CONDITION_GROUPS = GROUPS  # `scan`'s condition groups (conditions="missing,noisy"); DIAGNOSTICS need forwards of their own


def gate_limits(name: str, value: Any, *, label: str) -> Any:
    """A gate rule's limits parsed and checked as `GateRules` checks them; errors start with `label`."""
    return parse_limits(name, value, label=label)
