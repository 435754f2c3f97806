"""The checks of DFR's array arguments (biasaudit.methods.dfr): each refused in one sentence that names the parameter
and what was expected."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biasaudit._core.arguments import check_argument
from biasaudit.errors import ArgumentTypeError, InputError


def checked_features(value: Any, *, name: str, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    check_argument(value, np.ndarray, parameter=name, where=where)
    if value.ndim != 2 or not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise InputError(
            f"The {name!r} parameter of {where} has dtype {value.dtype} and shape {value.shape}; expected a "
            "2-D numeric array [samples, features]."
        )
    x: np.ndarray = value.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"The {name!r} parameter of {where} holds NaN or infinite values; expected finite classifier inputs.")
    return x


def checked_integers(value: Any, *, name: str, length: int, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    check_argument(value, np.ndarray, parameter=name, where=where)
    if not np.issubdtype(value.dtype, np.integer):
        raise ArgumentTypeError(f"The {name!r} parameter of {where} must hold integers; got dtype {value.dtype}.")
    if value.ndim != 1 or len(value) != length:
        raise InputError(
            f"The {name!r} parameter of {where} has shape {value.shape}; expected one entry per row of "
            f"'features' ({length}), 1-D."
        )
    if length and value.min() < 0:
        raise InputError(f"The {name!r} parameter of {where} holds {int(value.min())}; expected values of at least 0.")
    integers: np.ndarray = value.astype(np.int64)
    return integers


def checked_num_classes(y: np.ndarray, num_classes: int | None, *, where: str) -> int:
    if len(y) == 0:
        raise InputError(f"The 'features' parameter of {where} has no rows; expected held-out samples with labels and groups.")
    classes = int(y.max()) + 1 if num_classes is None else num_classes
    if int(y.max()) >= classes:
        raise InputError(
            f"The 'labels' parameter of {where} holds class {int(y.max())}, but labels must lie in [0, {classes}) "
            f"for num_classes={classes}."
        )
    if classes < 2:
        raise InputError(
            f"The 'labels' parameter of {where} holds a single class (num_classes={classes}); expected at least 2 classes."
        )
    missing = np.flatnonzero(np.bincount(y, minlength=classes) == 0)
    if missing.size:
        raise InputError(
            f"The 'labels' parameter of {where} lacks class(es) {missing.tolist()} of {classes}; expected samples "
            "of every class, since DFR refits every class of the layer."
        )
    return classes


def checked_groups(y: np.ndarray, g: np.ndarray, classes: int, *, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group ids, each row's dense group index and the group sizes; refuses small or mixed-label groups."""
    group_ids, group_of, sizes = np.unique(g, return_inverse=True, return_counts=True)
    if sizes.min() < 2:
        raise InputError(
            f"The 'groups' parameter of {where} has group {int(group_ids[sizes.argmin()])} with "
            f"{int(sizes.min())} sample; expected at least 2 per group (one per tuning half): merge or drop the "
            "rare groups."
        )
    label_count = np.zeros((len(group_ids), classes), dtype=np.int64)
    np.add.at(label_count, (group_of, y), 1)
    mixed = np.flatnonzero((label_count > 0).sum(axis=1) > 1)
    if mixed.size:
        labels = np.flatnonzero(label_count[mixed[0]]).tolist()
        raise InputError(
            f"The 'groups' parameter of {where} has group {int(group_ids[mixed[0]])} holding labels {labels}; "
            "expected one (label, bias value) pair per group, such as label * num_bias + bias."
        )
    return group_ids, group_of.reshape(-1), sizes


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
