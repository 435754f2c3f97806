"""The diagnostics every scan streams beside its conditions, by the name of their section in the audit.

Adding one is a class that follows biasaudit/diagnostics/protocol.py and a line here: the scan creates it for every
pass, feeds it every batch, merges it across shards (part files included) and writes what `compute` returns as the
audit's section of that name. The order is the order of the sections and of the notes they add.
"""

from __future__ import annotations

from biasaudit.diagnostics.calibration import CalibrationDiagnostic
from biasaudit.diagnostics.embeddings import EmbeddingsDiagnostic
from biasaudit.diagnostics.groups_diagnostic import GroupsDiagnostic
from biasaudit.diagnostics.jsd import JSDDiagnostic
from biasaudit.diagnostics.protocol import Diagnostic, PassFacts
from biasaudit.errors import InputError

DIAGNOSTICS: dict[str, type[Diagnostic]] = {
    "jsd": JSDDiagnostic,
    "embeddings": EmbeddingsDiagnostic,
    "groups": GroupsDiagnostic,
    "calibration": CalibrationDiagnostic,
}
# Measured again, on the k-means bias values, in the second pass a scan makes when the data has no bias key (the JSD
# of those values is fed by the discovery itself, from the forwards that found them).
ON_DISCOVERED_BIAS = ("groups",)


def diagnostic_class(name: str) -> type[Diagnostic]:
    if name not in DIAGNOSTICS:
        raise InputError(f"Diagnostic {name!r} is unknown. Available: {', '.join(DIAGNOSTICS)}.")
    return DIAGNOSTICS[name]


def create_diagnostics(facts: PassFacts, names: tuple[str, ...] | None = None) -> dict[str, Diagnostic]:
    """A fresh diagnostic of each name (default: every registered one), for one pass."""
    return {name: diagnostic_class(name)(facts) for name in (tuple(DIAGNOSTICS) if names is None else names)}


def part_classes() -> tuple[type, ...]:
    """Every class a part file may hold of the registered diagnostics' states."""
    return tuple(dict.fromkeys(cls for diagnostic in DIAGNOSTICS.values() for cls in (diagnostic, *diagnostic.part_classes)))
