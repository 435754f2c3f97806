"""Naming parts of a model by dotted path ("head", "vision.encoder"), with the nearest names when a path is wrong."""

from __future__ import annotations

import difflib

from torch import nn

from biasaudit.errors import AdapterError


def submodule(model: nn.Module, path: str, *, what: str) -> nn.Module:
    """model.get_submodule(path); a path that names nothing is an AdapterError naming the closest existing paths."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        # A container's numbered children (vision.0, vision.1, ...) crowd out the names a user types; offer them only
        # when the path itself ends in a number.
        if not path.rpartition(".")[2].isdigit():
            names = [name for name in names if not name.rpartition(".")[2].isdigit()]
        near = difflib.get_close_matches(path, names, n=4, cutoff=0.4)
        hint = (
            f"nearest: {', '.join(near)}"
            if near
            else f"its top-level modules are {', '.join(n for n, _ in model.named_children()) or 'none'}"
        )
        raise AdapterError(f"The {what} path {path!r} names no submodule of {type(model).__name__} ({hint}).") from None


def linear_classifier(model: nn.Module, path: str) -> nn.Linear:
    """The final classifier must be an nn.Linear: its input is the fused feature, and MMDB replaces its weights."""
    module = submodule(model, path, what="classifier")
    if isinstance(module, nn.Linear):
        return module
    inner = [f"{path}.{name}" for name, m in module.named_modules() if name and isinstance(m, nn.Linear)]
    hint = f"; the last nn.Linear inside it is {inner[-1]!r}" if inner else ""
    raise AdapterError(f"The classifier path {path!r} names a {type(module).__name__}; expected the final nn.Linear{hint}.")
