"""Loading checkpoints safely, saving outputs atomically, and hashing files for the manifest."""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from biasaudit.errors import CheckpointError

# Keys under which training scripts commonly nest the weights.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> Mapping[str, Any]:
    """Return the state dict stored at `path`.

    Loads with weights_only=True, which refuses arbitrary pickled objects; a full pickle needs
    `trust=True` (the CLI's --trust-checkpoint) because unpickling can run any code.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} is not a file; expected a file written by torch.save.")
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
        raise CheckpointError(f"Checkpoint {path} is not a readable PyTorch file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}).") from exc
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in _NESTED_STATE_KEYS:
            nested = obj.get(key)
            if isinstance(nested, Mapping) and nested and all(isinstance(v, torch.Tensor) for v in nested.values()):
                return nested
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(f"Checkpoint {path} holds a {type(obj).__name__}, not a state dict of tensors; expected torch.save(model.state_dict(), ...).")


def describe_mismatch(model: nn.Module, state: Mapping[str, Any]) -> str | None:
    """A sentence naming missing, unexpected and wrongly shaped keys, or None when they match."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)]

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


def load_into_model(adapter: Any, model: nn.Module, state: Mapping[str, Any], *, path: str | os.PathLike) -> None:
    problem = describe_mismatch(model, state)
    try:
        adapter.load_state(model, state)
    except RuntimeError as exc:
        detail = problem or str(exc).splitlines()[0]
        raise CheckpointError(f"Checkpoint {path} does not match the adapter's model ({detail}).") from exc
    # An adapter's own load_state may remap keys, so a key mismatch it accepted is not an error.


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write to a temp file in the same directory, then rename: readers never see a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # mkstemp creates 0600; outputs should get the permissions any normal file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state_atomic(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    import io

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}, buffer)
    atomic_write_bytes(buffer.getvalue(), path)
