"""The training state biasaudit's loop (loop.py) saves after every epoch and resumes from: the model, the optimizer, an
fp16 run's gradient scaler, every random generator, the step log, the method's own state and the run's identity, sealed
by a SHA-256 so an altered file is refused rather than resumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Mapping

import torch
from torch import nn

from biasaudit._core.files import atomic_write_bytes
from biasaudit._core.sealed import is_sealed, sealed_bytes, unsealed
from biasaudit.errors import CheckpointError
from biasaudit.training import rng_states
from biasaudit.training.driver import TrainingMethod
from biasaudit.training.train_config import TrainConfig


def _state_path(directory: Path) -> Path:
    return directory / "last.pt"


def run_identity(method: TrainingMethod, config: TrainConfig, *, world: int = 1) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one to continue it exactly: the training config
    (the device aside), the method with every setting and the number of training processes. Plain JSON values, so it
    survives the state file."""
    import json

    config_values = {k: v for k, v in config.to_dict().items() if k != "device"}
    identity = {"config": config_values, "method": method.name, "settings": method.settings(), "processes": world}
    return json.loads(json.dumps(identity, default=str))


def check_same_processes(saved: Mapping[str, Any] | None, world: int) -> None:
    """CheckpointError when the state to resume was written by a run over another number of processes."""
    saved_world = int((saved or {}).get("processes", 1))
    if saved_world != world:
        raise CheckpointError(
            f"The training state to resume was written by a run over {saved_world} process(es), not {world}; resuming "
            f"over {world} would give each process other rows of every batch, so its random draws (dropout) and "
            f"BatchNorm statistics would differ from the interrupted run's. Resume with {saved_world} process(es) "
            "(torchrun --nproc-per-node), or run without --resume."
        )


def check_same_run(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """CheckpointError naming what changed; a state written before identities were saved is not checked."""
    if not saved:
        return
    if saved.get("method") != current["method"]:
        raise CheckpointError(
            f"The training state to resume was written by method {saved.get('method')!r}, not {current['method']!r}; "
            "resume with the same method or run without --resume."
        )
    check_same_processes(saved, int(current.get("processes", 1)))
    # A state written before a setting existed trained with its default (e.g. Adam before --optimizer).
    defaults = TrainConfig().to_dict()
    changed = [
        f"--{k.replace('_', '-')} {saved['config'].get(k, defaults.get(k))!r} -> {v!r}"
        for k, v in current["config"].items()
        if saved["config"].get(k, defaults.get(k)) != v
    ]
    changed += [
        f"{k} {saved['settings'].get(k)!r} -> {v!r}"
        for k, v in current["settings"].items()
        if saved["settings"].get(k) != v and k not in ("margins", "cluster_sizes")
    ]
    if changed:
        raise CheckpointError(
            f"--resume would continue the interrupted run with other settings ({'; '.join(changed)}); "
            "resume with the options it was started with, or run without --resume."
        )


def save_training_state(
    directory: Path,
    *,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    log: list[dict],
    method_state: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    rng_by_rank: list[dict[str, Any]] | None = None,
    scaler: dict[str, Any] | None = None,
) -> None:
    """Write the state (rank 0 of a data-parallel run: `rng_by_rank` holds every process's generators, in rank order;
    `scaler`: an fp16 run's gradient scaler, precision.py, None otherwise)."""
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_by_rank[0] if rng_by_rank else rng_states.capture(),
        "rng_by_rank": rng_by_rank,
        "log": log,
        "method": method_state or {},
        "run": identity,
        "scaler": scaler,
    }
    atomic_write_bytes(sealed_bytes(state, header={"format": TRAINING_STATE}), _state_path(directory))


TRAINING_STATE = "biasaudit-training-state"


def load_training_state(directory: Path) -> dict[str, Any]:
    path = _state_path(directory)
    if not path.is_file():
        raise CheckpointError(f"--resume found no training state at {path}; run without --resume first.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"Training state {path} cannot be read ({type(exc).__name__}); delete it to start over.") from exc
    if not is_sealed(loaded):
        return loaded  # written before states were sealed: read as it always was
    state = unsealed(loaded)
    if state is None:
        raise CheckpointError(
            f"Training state {path} was altered or damaged after it was written (its content does not match the "
            "SHA-256 recorded in it); resuming from it would not continue the run. Delete it to start over."
        )
    return state
