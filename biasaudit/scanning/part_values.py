"""A scan part's content as plain values and back (biasaudit/scanning/parts.py): numbers, strings, tensors and lists
tagged with the container or class they stand for, which `torch.load(weights_only=True)` reads without running code
from the file. Objects are rebuilt only from SCAN_CLASSES and the registered diagnostics' part classes
(biasaudit/diagnostics/registry.py part_classes)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from biasaudit._core.exact_sums import ExactSum
from biasaudit.data.fingerprint import SampleFingerprint
from biasaudit.data.modality import Modality
from biasaudit.diagnostics.accuracy import ConditionAccumulator
from biasaudit.diagnostics.carrier import CarrierAccumulator, SwapCounts
from biasaudit.diagnostics.interaction import InteractionAccumulator
from biasaudit.diagnostics.mutes import Moments
from biasaudit.diagnostics.registry import part_classes
from biasaudit.diagnostics.shapley import ShapleyAccumulator
from biasaudit.scanning.conditions import Condition
from biasaudit.scanning.state import PassState, ScanContext, ScanState

SCAN_CLASSES = (
    PassState,
    ScanState,
    ScanContext,
    Condition,
    Modality,
    ConditionAccumulator,
    ExactSum,
    Moments,
    CarrierAccumulator,
    SwapCounts,
    ShapleyAccumulator,
    InteractionAccumulator,
    SampleFingerprint,
)


def part_classes_by_name() -> dict[str, type]:
    """The classes a part's objects are rebuilt from, by name: the scan's own and the registered diagnostics'."""
    return {cls.__name__: cls for cls in (*SCAN_CLASSES, *part_classes())}


def to_plain(value: Any) -> Any:
    """Every value as plain data: each container is a list tagged with its type, arrays are tensors."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype == np.uint64:
            return ["uint64", torch.from_numpy(value.view(np.int64).copy())]
        if value.dtype == object:
            raise TypeError("object arrays are not stored in a part")
        return ["array", torch.from_numpy(np.ascontiguousarray(value).copy())]
    if isinstance(value, Counter):
        return ["counter", [[to_plain(k), to_plain(v)] for k, v in value.items()]]
    if isinstance(value, dict):
        return ["dict", [[to_plain(k), to_plain(v)] for k, v in value.items()]]
    if isinstance(value, frozenset):
        return ["frozenset", sorted(to_plain(v) for v in value)]
    if isinstance(value, tuple):
        return ["tuple", [to_plain(v) for v in value]]
    if isinstance(value, list):
        return ["list", [to_plain(v) for v in value]]
    name = type(value).__name__
    if part_classes_by_name().get(name) is type(value):
        fields = vars(value)
        return ["object", name, [[k, to_plain(v)] for k, v in fields.items()]]
    raise TypeError(f"a {name} is not stored in a part")


def from_plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise ValueError(f"unexpected {type(value).__name__}")
    tag = value[0]
    if tag == "array":
        return value[1].numpy().copy()
    if tag == "uint64":
        return value[1].numpy().copy().view(np.uint64)
    if tag in ("dict", "counter"):
        out = {from_plain(k): from_plain(v) for k, v in value[1]}
        return Counter(out) if tag == "counter" else out
    if tag == "frozenset":
        return frozenset(from_plain(v) for v in value[1])
    if tag == "tuple":
        return tuple(from_plain(v) for v in value[1])
    if tag == "list":
        return [from_plain(v) for v in value[1]]
    if tag == "object":
        cls = part_classes_by_name()[value[1]]  # KeyError for a class we do not rebuild: the caller names the file
        obj: Any = object.__new__(cls)  # an instance of any recorded class, its fields restored below
        obj.__dict__.update({k: from_plain(v) for k, v in value[2]})
        return obj
    raise ValueError(f"unknown tag {tag!r}")
