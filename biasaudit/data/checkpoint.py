"""Loading checkpoints safely, saving outputs atomically, and hashing files for the manifest."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import torch
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit._core.files import atomic_write_bytes
from biasaudit._core.input_paths import check_input_file
from biasaudit.errors import CheckpointError

# Keys under which training scripts commonly nest the weights.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")
# Prefixes that wrappers put on every key: DataParallel / DistributedDataParallel, torch.compile, and a Lightning
# module that holds the network as `self.model`. They can stack (a compiled model wrapped in DDP: "module._orig_mod.").
KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.")
_MAX_STACKED = 3


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive; older torch (and _use_new_zipfile_serialization=False) a pickle, whose first
    byte is the PROTO opcode 0x80. Anything else (random bytes, a .py file, JSON) is not a checkpoint at all."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """A CheckpointError unless `path` is a readable file (its contents are read_checkpoint's to judge)."""
    check_input_file(Path(path), named=f"Checkpoint {path}", expected="a file written by torch.save", error=CheckpointError)


def read_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> Mapping[str, Any]:
    """Return the state dict stored at `path`.

    Loads with weights_only=True, which refuses arbitrary pickled objects; a full pickle needs
    `trust=True` (the CLI's --trust-checkpoint) because unpickling can run any code.
    """
    path = Path(path)
    check_checkpoint_file(path)
    if not _looks_like_torch_file(path):
        raise CheckpointError(
            f"Checkpoint {path} is not a PyTorch checkpoint (neither torch.save's zip format nor a pickle); "
            "expected a file written by torch.save(model.state_dict(), ...)."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise CheckpointError(
                f"Checkpoint {path} cannot be loaded with weights_only=True because it holds pickled Python objects; "
                "pass --trust-checkpoint only if you trust where it came from."
            ) from exc
        raise CheckpointError(f"Checkpoint {path} is not a readable PyTorch file: {exc}.") from exc
    except Exception as exc:  # torch raises several types for truncated or foreign files
        detail = str(exc).splitlines()[0] if str(exc) else "no detail"
        raise CheckpointError(f"Checkpoint {path} is not a readable PyTorch file ({type(exc).__name__}: {detail}).") from exc
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in _NESTED_STATE_KEYS:
            nested = obj.get(key)
            if isinstance(nested, Mapping) and nested and all(isinstance(v, torch.Tensor) for v in nested.values()):
                return nested
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(
        f"Checkpoint {path} holds a {type(obj).__name__}, not a state dict of tensors; "
        "expected torch.save(model.state_dict(), ...)."
    )


def describe_mismatch(model: nn.Module, state: Mapping[str, Any]) -> str | None:
    """A sentence naming missing, unexpected and wrongly shaped keys, or None when they match."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)
    ]

    def _few(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {_few(shapes)}")
    return "; ".join(parts) or None


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries whose key starts with `prefix`, with it removed; the others are left out (a Lightning module's
    state also holds e.g. its loss's weights, which are not the network's)."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _few_keys(state: Mapping[str, Any], count: int = 4) -> str:
    keys = list(state)
    return ", ".join(keys[:count]) + (f" and {len(keys) - count} more" if len(keys) > count else "")


def find_wrapper_prefix(expected: set[str], state: Mapping[str, Any]) -> str | None:
    """The stack of KNOWN_PREFIXES whose removal makes the keys exactly the model's, or None when the keys match as
    they are or no such stack exists (then the load reports the mismatch with the keys as they are in the file)."""
    if set(state) == expected:
        return None
    frontier: list[tuple[str, Mapping[str, Any]]] = [("", state)]
    for _ in range(_MAX_STACKED):
        following: list[tuple[str, Mapping[str, Any]]] = []
        for removed, current in frontier:
            for prefix in KNOWN_PREFIXES:
                stripped = strip_prefix(current, prefix)
                if not stripped:
                    continue
                if set(stripped) == expected:
                    return removed + prefix
                following.append((removed + prefix, stripped))
        frontier = following
    return None


def resolve_prefix(
    adapter: Any, model: nn.Module, state: Mapping[str, Any], *, path: str | os.PathLike
) -> tuple[Mapping[str, Any], str | None]:
    """The state with the adapter's `state_dict_prefix` removed, or else a wrapper's prefix when that is what makes
    the keys match the model; and the prefix removed (None when nothing was)."""
    prefix = getattr(adapter, "state_dict_prefix", None)
    if prefix:
        if set(state) == set(model.state_dict()):
            return state, None  # a plain state dict, e.g. the one `biasaudit fix` wrote for this adapter's model
        stripped = strip_prefix(state, prefix)
        if not stripped:
            raise CheckpointError(
                f"The adapter's state_dict_prefix {prefix!r} matches no key of checkpoint {path}; its keys are "
                f"{_few_keys(state)}."
            )
        return stripped, prefix
    # An adapter with its own load_state may expect the keys as they are (it may remap them itself).
    own_load = getattr(type(adapter), "load_state", None)
    if own_load is not None and own_load is not Adapter.load_state:
        return state, None
    found = find_wrapper_prefix(set(model.state_dict()), state)
    return (strip_prefix(state, found), found) if found else (state, None)


def load_into_model(adapter: Any, model: nn.Module, state: Mapping[str, Any], *, path: str | os.PathLike) -> str | None:
    """Load the checkpoint's state into the model; returns the key prefix removed on the way (see resolve_prefix)."""
    state, removed = resolve_prefix(adapter, model, state, path=path)
    problem = describe_mismatch(model, state)
    try:
        adapter.load_state(model, state)
    except RuntimeError as exc:
        detail = problem or str(exc).splitlines()[0]
        raise CheckpointError(f"Checkpoint {path} does not match the adapter's model ({detail}).") from exc
    # An adapter's own load_state may remap keys, so a key mismatch it accepted is not an error.
    return removed


def save_state_atomic(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    import io

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}, buffer)
    atomic_write_bytes(buffer.getvalue(), path)
