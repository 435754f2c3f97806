"""The CLI's fixed choices as enums, each made from the library registry it names: `--help` lists them, and a typo
is refused by click before any work (exit 2, one usage sentence). A settings file's values are strings checked by
the library itself, with the same registry's "Available: ..." in its error. (`gate` keeps every usage error on one
line, which CI logs show whole, so its --jsd stays a string checked by the gate's own rules.)"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any, Iterable

from biasaudit.diagnostics.groups import GROUPINGS
from biasaudit.scanning import PRECISIONS, PROJECTIONS
from biasaudit.methods.balgrad import KL_MODES, PROJECTIONS as BALGRAD_PROJECTIONS, SCHEDULES
from biasaudit.training.method_balgrad import HEAD_MODES, WEIGHT_MODES
from biasaudit.training.method_mmdb import BIAS_SOURCES
from biasaudit.training.methods import METHODS
from biasaudit.training.optimizers import OPTIMIZERS


def _choices(name: str, values: Iterable[str]) -> type[StrEnum]:
    return StrEnum(name, {value: value for value in values})  # type: ignore[return-value]


Projection = _choices("Projection", PROJECTIONS)
Precision = _choices("Precision", PRECISIONS)
GroupBy = _choices("GroupBy", GROUPINGS)
Method = _choices("Method", METHODS)
Optimizer = _choices("Optimizer", OPTIMIZERS)
BiasSource = _choices("BiasSource", BIAS_SOURCES)
Schedule = _choices("Schedule", SCHEDULES)
KLMode = _choices("KLMode", KL_MODES)
BalGradProjection = _choices("BalGradProjection", BALGRAD_PROJECTIONS)
HeadMode = _choices("HeadMode", HEAD_MODES)
WeightMode = _choices("WeightMode", WEIGHT_MODES)


def plain(value: Any) -> Any:
    """A choice as the plain string the library takes (and audits record); any other value unchanged."""
    return value.value if isinstance(value, Enum) else value
