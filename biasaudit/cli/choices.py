"""The CLI's fixed choices as enums: `--help` lists them, and a typo is refused by click before any work (exit 2, one
usage sentence). A settings file's values are strings checked by the library itself, with its registry's
"Available: ..." in its error. (`gate` keeps every usage error on one line, which CI logs show whole, so its --jsd stays
a string checked by the gate's own rules.)

The fix methods are read from their registry (through biasaudit.api._names), which imports nothing heavy. The other names
are written out here rather than read from the registries they mirror (biasaudit.scanning.config, the optimizers, the
methods' modes, ...): those modules import torch and scikit-learn, and every command's options are built before any
command runs, so reading them would make `biasaudit --help` take seconds. tests/test_cli_startup.py checks that each
tuple below equals its registry, in order, so a mode added there fails the tests until it is added here."""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any, TypeAlias
from collections.abc import Iterable

from biasaudit.api._names import FIX_METHODS

# Each tuple mirrors the registry named in its comment.
PROJECTIONS = ("umap", "pca")  # biasaudit.scanning.config.PROJECTIONS
PRECISIONS = ("fp32", "bf16", "fp16")  # biasaudit.scanning.config.PRECISIONS
GROUPINGS = ("auto", "bias", "alignment")  # biasaudit.diagnostics.groups.GROUPINGS
METHODS = FIX_METHODS  # the registry's (biasaudit.training.methods), not mirrored: reading it imports no torch
OPTIMIZERS = ("adam", "adamw", "sgd")  # biasaudit.training.optimizers.OPTIMIZERS
FEATURE_CACHE_MODES = ("auto", "on", "off")  # biasaudit.training.feature_cache.MODES
BIAS_SOURCES = ("auto", "key", "kmeans")  # biasaudit.training.method_mmdb.BIAS_SOURCES
SCHEDULES = ("linear", "constant")  # biasaudit.methods.balgrad.SCHEDULES
KL_MODES = ("mutual", "undirected")  # biasaudit.methods.balgrad.KL_MODES
BALGRAD_PROJECTIONS = ("global", "per_modality")  # biasaudit.methods.balgrad.PROJECTIONS
HEAD_MODES = ("shared_zero", "ogm_split", "separate")  # biasaudit.training.method_balgrad.HEAD_MODES
WEIGHT_MODES = ("batch", "running")  # biasaudit.training.method_balgrad.WEIGHT_MODES


def _choices(name: str, values: Iterable[str]) -> type[StrEnum]:
    # The functional Enum API returns the base class's type to mypy, which cannot know the members named at run time
    # [return-value].
    return StrEnum(name, {value: value for value in values})  # type: ignore[return-value]


if TYPE_CHECKING:
    # Built at run time from the tuples above, which mypy cannot follow: a class made by a call is no type to it
    # [valid-type]. Each choice's members are str (StrEnum), and a command's default is the plain string, so the options
    # are typed as str.
    Projection: TypeAlias = str
    Precision: TypeAlias = str
    GroupBy: TypeAlias = str
    Method: TypeAlias = str
    Optimizer: TypeAlias = str
    FeatureCache: TypeAlias = str
    BiasSource: TypeAlias = str
    Schedule: TypeAlias = str
    KLMode: TypeAlias = str
    BalGradProjection: TypeAlias = str
    HeadMode: TypeAlias = str
    WeightMode: TypeAlias = str
else:
    Projection = _choices("Projection", PROJECTIONS)
    Precision = _choices("Precision", PRECISIONS)
    GroupBy = _choices("GroupBy", GROUPINGS)
    Method = _choices("Method", METHODS)
    Optimizer = _choices("Optimizer", OPTIMIZERS)
    FeatureCache = _choices("FeatureCache", FEATURE_CACHE_MODES)
    BiasSource = _choices("BiasSource", BIAS_SOURCES)
    Schedule = _choices("Schedule", SCHEDULES)
    KLMode = _choices("KLMode", KL_MODES)
    BalGradProjection = _choices("BalGradProjection", BALGRAD_PROJECTIONS)
    HeadMode = _choices("HeadMode", HEAD_MODES)
    WeightMode = _choices("WeightMode", WEIGHT_MODES)


def plain(value: Any) -> Any:
    """A choice as the plain string the library takes (and audits record); any other value unchanged."""
    return value.value if isinstance(value, Enum) else value
