"""The training loop shared by every `fix` method: seeded shuffling, a checkpoint every epoch, exact
resume, frozen parameters left frozen, and a per-step log.

The adapter yields batches in a fixed order (scans must be reproducible), so the loop shuffles: it
gathers up to `shuffle_buffer` samples, permutes them with a generator seeded by (seed, epoch) and
re-batches. Within the buffer this is a true shuffle; beyond it, an approximation that keeps memory
bounded. Because the permutation depends only on (seed, epoch), a resumed run sees the same batches.

Two optional extensions serve methods that are more than a per-step gradient (methods.md section 8):
- Sample indices. A method with `sample_index = True` (JTT) gets every training batch with one more column,
  SAMPLE_INDEX: each sample's global index in the training split (its position in the adapter's order, counted
  before held-out rows are removed), a long tensor that shuffles with the rows. Other methods get the batches
  exactly as before. A method strips the column (`without_index`) before adapter.prepare.
- Epoch end. A method with `epoch_end(model, view, *, epoch, epochs, device)` is called after each epoch's steps
  and before the epoch's training state is saved, so whatever it changes (D&R's re-initialised branches, JTT's
  restart) is in that state and a resumed run continues after it. `view` is the TrainingView (train without the
  held-out rows, `indexed_training_batches`, `validation`). It returns None or an EpochEnd: figures for the log
  (added to the epoch's last step entry under "epoch_end") and `fresh_optimizer`, set when the method put the
  model back to earlier weights (JTT's stage 2 starts where stage 1 started, with a new optimizer): the loop then
  builds a new optimizer with the run's settings.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import adapter_batches, checked_labels, int_column, take_rows
from biasaudit._core.files import atomic_write_bytes
from biasaudit._core.sealed import is_sealed, sealed_bytes, unsealed
from biasaudit.errors import CheckpointError, InputError
from biasaudit.data.impairments import other_keys, padding_side, widen_tokens
from biasaudit.data.modality import Modality
from biasaudit._core.progress import Progress, with_status
from biasaudit._core.randomness import uniform
from biasaudit.training import rng_states
from biasaudit.training.live_status import EpochMeans
from biasaudit.training.model_modes import set_training_modes
from biasaudit.training.optimizers import check_optimizer, make_optimizer


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0
    device: str = "cpu"
    shuffle_buffer: int = 100_000
    split: str = "train"
    # Fraction of the train split held out (seeded per sample) for model selection when there is no val split.
    holdout: float = 0.0
    optimizer: str = "adam"  # biasaudit/training/optimizers.py
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} is {getattr(self, name)}; expected a positive integer.")
        # Adam works in the parameters' precision: a rate float32 cannot hold overflows inside torch (exit 3).
        if not 0 < self.lr <= torch.finfo(torch.float32).max:
            raise InputError(f"lr is {self.lr}; expected a positive learning rate that float32 can hold (at most 3.4e38).")
        check_optimizer(self.optimizer, weight_decay=self.weight_decay, momentum=self.momentum)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SAMPLE_INDEX = "biasaudit_sample_index"  # the column of global training-sample indices (methods with sample_index)


def without_index(batch: Mapping[str, Any]) -> Mapping[str, Any]:
    """The batch as the adapter yielded it: without the loop's SAMPLE_INDEX column."""
    return {k: v for k, v in batch.items() if k != SAMPLE_INDEX} if SAMPLE_INDEX in batch else batch


@dataclass(frozen=True)
class EpochEnd:
    """What a method's epoch_end did: figures for the log, and whether the loop must start a fresh optimizer
    (the method reset the model's weights, so the optimizer's moments belong to weights that no longer exist)."""

    figures: dict[str, Any]
    fresh_optimizer: bool = False


class TrainingMethod(Protocol):
    name: str

    def prepare(self, model: nn.Module, adapter: Adapter, *, device: torch.device) -> None: ...

    # Fills .grad of the trainable parameters for one batch, as a user's loop does between zero_grad() and step():
    # the loop owns the optimiser (zeroes before, steps after), so a method is the same component in any loop.
    def gradients(self, model: nn.Module, adapter: Adapter, batch: Mapping[str, Any], *, step: int, total_steps: int,
                  device: torch.device) -> dict[str, Any]: ...

    def export(self, model: nn.Module, adapter: Adapter) -> None: ...

    def settings(self) -> dict[str, Any]: ...

    # Training-only state outside the model (e.g. BalGrad's separate heads): optimised with the model,
    # saved with every epoch and restored on --resume, never exported.
    def extra_parameters(self) -> list[nn.Parameter]: ...

    def extra_state(self) -> dict[str, Any]: ...

    def load_extra_state(self, state: dict[str, Any]) -> None: ...

    # Optional (see the module docstring): `sample_index = True` for the SAMPLE_INDEX column;
    # `check_config(config)` refuses a TrainConfig the method cannot run under, before any work;
    # `epoch_end(model, view, *, epoch, epochs, device) -> EpochEnd | None` after each epoch.


def method_parameters(method: TrainingMethod) -> list[nn.Parameter]:
    """The method's training-only parameters; none for a method without the hook."""
    hook = getattr(method, "extra_parameters", None)
    return list(hook()) if callable(hook) else []


@contextmanager
def scored_as_trained(method: TrainingMethod, model: nn.Module, adapter: Adapter) -> Iterator[str | None]:
    """The block runs with the exported model scoring as the method trained it (MMDB's cosine logits), yielding
    the sentence an audit made inside it records; None and no change for a method whose export is exact."""
    hook = getattr(method, "as_trained", None)
    if not callable(hook):
        yield None
        return
    with hook(model, adapter) as note:
        yield note


def method_state(method: TrainingMethod) -> dict[str, Any]:
    hook = getattr(method, "extra_state", None)
    return dict(hook()) if callable(hook) else {}


def restore_method_state(method: TrainingMethod, state: dict[str, Any]) -> None:
    hook = getattr(method, "load_extra_state", None)
    if callable(hook):
        hook(state)
    elif state:
        raise CheckpointError(f"The training state to resume holds state of another method ({', '.join(state)}); "
                              f"resume with the method that wrote it.")


def concat(batches: list[Mapping[str, Any]], modalities: Sequence[Modality] = ()) -> dict[str, Any]:
    """One batch of all rows. Token ids padded per batch (a Hugging Face collator pads each batch to its own longest
    text) are first padded to the widest batch, on the tokenizer's side: the declared one, else left when any batch
    shows left padding."""
    batches = list(batches)
    for modality in modalities:
        if modality.kind != "tokens" or len({b[modality.key].shape[1] for b in batches}) < 2:
            continue
        sides = {padding_side(b[modality.mask_key], modality) for b in batches}
        side = "left" if "left" in sides else "right"
        width = max(b[modality.key].shape[1] for b in batches)
        others = other_keys(modalities, modality)
        batches = [widen_tokens(b, modality, width, side=side, others=others) for b in batches]
    out = {}
    for key in batches[0]:
        values = [b[key] for b in batches]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.cat(values)
        elif isinstance(values[0], np.ndarray):
            out[key] = np.concatenate(values)
        else:
            out[key] = [item for value in values for item in value]
    return out


def holdout_rows(indices: np.ndarray, *, config: TrainConfig) -> np.ndarray:
    """Which samples of the train split are held out: a fixed per-sample draw under the seed."""
    if config.holdout <= 0:
        return np.zeros(len(indices), dtype=bool)
    return uniform(config.seed, "holdout", np.asarray(indices, dtype=np.int64)) < config.holdout


def training_batches(adapter: Adapter, *, config: TrainConfig, batch_size: int | None = None,
                     index: bool = False) -> Iterator[Mapping[str, Any]]:
    """The training split's batches in the adapter's order, without the held-out rows (never empty); with `index`,
    each with the SAMPLE_INDEX column of its samples' global indices."""
    offset = 0
    for batch in adapter_batches(adapter, config.split, batch_size=batch_size or config.batch_size):
        n = len(checked_labels(batch, adapter, split=config.split))
        keep = ~holdout_rows(np.arange(offset, offset + n), config=config)
        if index:
            batch = {**batch, SAMPLE_INDEX: torch.arange(offset, offset + n, dtype=torch.long)}
        offset += n
        if keep.all() and n:
            yield batch
        elif keep.any():
            yield take_rows(batch, np.flatnonzero(keep))


def held_out_batches(adapter: Adapter, *, config: TrainConfig, batch_size: int) -> Iterator[Mapping[str, Any]]:
    """The held-out rows of the training split (config.holdout), in the adapter's order: what validates a run
    that has no val split, never trained on."""
    offset = 0
    for batch in adapter_batches(adapter, config.split, batch_size=batch_size):
        n = len(checked_labels(batch, adapter, split=config.split))
        rows = np.flatnonzero(holdout_rows(np.arange(offset, offset + n), config=config))
        offset += n
        if rows.size:
            yield take_rows(batch, rows)


class TrainingView:
    """The adapter as a method's prepare() sees it: the training split without the held-out rows, so margins,
    k-means clusters and any other statistic a method fits on train never see the samples that validate it
    (methods.md section 6, `--scale auto` without a val split). Every other attribute is the adapter's own."""

    def __init__(self, adapter: Adapter, config: TrainConfig) -> None:
        self._adapter, self._config = adapter, config

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def data(self, split: str, *, batch_size: int) -> Iterator[Mapping[str, Any]]:
        if split == self._config.split:
            return training_batches(self._adapter, config=self._config, batch_size=batch_size)
        return iter(self._adapter.data(split, batch_size=batch_size))

    def indexed_training_batches(self, *, batch_size: int) -> Iterator[Mapping[str, Any]]:
        """The training batches in the adapter's order with the SAMPLE_INDEX column (JTT's error-set pass)."""
        return training_batches(self._adapter, config=self._config, batch_size=batch_size, index=True)

    def validation_source(self) -> str | None:
        """Where a method validates: "val" when the adapter offers it, else the held-out part of train when the run
        holds one out (config.holdout), else None."""
        if "val" in self._adapter.splits:
            return "val"
        return f"held-out {self._config.holdout:.0%} of train" if self._config.holdout > 0 else None

    def validation(self, *, batch_size: int) -> Iterator[Mapping[str, Any]]:
        """The batches of validation_source(): never samples the run trains on."""
        if "val" in self._adapter.splits:
            return iter(adapter_batches(self._adapter, "val", batch_size=batch_size))
        if self._config.holdout > 0:
            return held_out_batches(self._adapter, config=self._config, batch_size=batch_size)
        raise InputError("There is no validation data: the adapter offers no 'val' split and the run holds out no part of train.")


def shuffled_batches(adapter: Adapter, *, config: TrainConfig, epoch: int, index: bool = False) -> Iterator[dict[str, Any]]:
    """The epoch's training batches; with `index`, each carries the SAMPLE_INDEX column (the same rows either way)."""
    rng = np.random.default_rng([config.seed, epoch, 7])
    buffer: list[Mapping[str, Any]] = []
    held = 0

    def flush() -> Iterator[dict[str, Any]]:
        merged = concat(buffer, adapter.modalities)
        order = rng.permutation(held)
        for lo in range(0, held, config.batch_size):
            yield take_rows(merged, order[lo: lo + config.batch_size])

    for batch in training_batches(adapter, config=config, index=index):
        buffer.append(batch)
        held += len(checked_labels(batch, adapter, split=config.split))
        if held >= config.shuffle_buffer:
            yield from flush()
            buffer, held = [], 0
    if held:
        yield from flush()


def count_steps(adapter: Adapter, *, config: TrainConfig) -> int:
    """Optimiser steps per epoch, counted the way shuffled_batches flushes its buffer: a buffer is emptied once it
    holds at least shuffle_buffer samples, so it can hold more (whole adapter batches are added), and the steps
    are ceil(held / batch_size) per flush. (Assuming flushes of exactly shuffle_buffer overcounted, so a
    schedule over the steps, BalGrad's lambda, never reached its end.)"""
    steps, held, total = 0, 0, 0
    for batch in training_batches(adapter, config=config):
        kept = len(checked_labels(batch, adapter, split=config.split))
        held += kept
        total += kept
        if held >= config.shuffle_buffer:
            steps += -(-held // config.batch_size)
            held = 0
    if total == 0:
        raise InputError(f"Split {config.split!r} is empty; there is nothing to train on.")
    return steps + -(-held // config.batch_size)


def bias_of(batch: Mapping[str, Any], adapter: Adapter, *, split: str) -> torch.Tensor:
    return torch.as_tensor(int_column(batch, adapter.bias_key, what="bias", split=split))


def _state_path(directory: Path) -> Path:
    return directory / "last.pt"


def run_identity(method: TrainingMethod, config: TrainConfig) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one to continue it exactly: the training config
    (the device aside) and the method with every setting. Plain JSON values, so it survives the state file."""
    import json

    config_values = {k: v for k, v in config.to_dict().items() if k != "device"}
    return json.loads(json.dumps({"config": config_values, "method": method.name, "settings": method.settings()}, default=str))


def check_same_run(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """CheckpointError naming what changed; a state written before identities were saved is not checked."""
    if not saved:
        return
    if saved.get("method") != current["method"]:
        raise CheckpointError(f"The training state to resume was written by method {saved.get('method')!r}, not {current['method']!r}; "
                              "resume with the same method or run without --resume.")
    # A state written before a setting existed trained with its default (e.g. Adam before --optimizer).
    defaults = TrainConfig().to_dict()
    changed = [f"--{k.replace('_', '-')} {saved['config'].get(k, defaults.get(k))!r} -> {v!r}" for k, v in current["config"].items()
               if saved["config"].get(k, defaults.get(k)) != v]
    changed += [f"{k} {saved['settings'].get(k)!r} -> {v!r}" for k, v in current["settings"].items()
                if saved["settings"].get(k) != v and k not in ("margins", "cluster_sizes")]
    if changed:
        raise CheckpointError(f"--resume would continue the interrupted run with other settings ({'; '.join(changed)}); "
                              "resume with the options it was started with, or run without --resume.")


def save_training_state(directory: Path, *, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, log: list[dict],
                        method_state: dict[str, Any] | None = None, identity: dict[str, Any] | None = None) -> None:
    state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": rng_states.capture(), "log": log, "method": method_state or {}, "run": identity}
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
        raise CheckpointError(f"Training state {path} was altered or damaged after it was written (its content does not match the "
                              "SHA-256 recorded in it); resuming from it would not continue the run. Delete it to start over.")
    return state


def train(model: nn.Module, adapter: Adapter, method: TrainingMethod, *, config: TrainConfig, state_dir: str | os.PathLike | None = None,
          resume: bool = False, progress: Progress | None = None, stage: str = "train") -> list[dict[str, Any]]:
    """Train in place; return the per-step log. `state_dir` gets `last.pt` after every epoch. `progress`
    gets `stage`, the step count and a live line of this epoch's mean losses (live_status.py).

    Every global generator the run draws from is seeded from `config.seed` and handed back as it was afterwards
    (rng_states.py); parts of the model whose parameters are all frozen train in eval mode (model_modes.py)."""
    with rng_states.seeded_run(config.seed):
        return _train(model, adapter, method, config=config, state_dir=state_dir, resume=resume, progress=progress, stage=stage)


def _train(model: nn.Module, adapter: Adapter, method: TrainingMethod, *, config: TrainConfig, state_dir: str | os.PathLike | None,
           resume: bool, progress: Progress | None, stage: str) -> list[dict[str, Any]]:
    from biasaudit.scanning.engine import resolve_device

    progress = with_status(progress)
    device = resolve_device(config.device)
    check_training = getattr(method, "check_config", None)
    if callable(check_training):
        check_training(config)  # e.g. JTT needs epochs for both stages: refused before any work
    model.to(device)
    # Runs right after the seeding: a method that draws its own parameters seeds a generator from
    # torch.initial_seed(), i.e. from the run seed. It sees train without the held-out rows.
    view = TrainingView(adapter, config)
    method.prepare(model, view, device=device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise InputError("The model has no trainable parameter (every requires_grad is False); nothing can be fixed.")

    def new_optimizer() -> torch.optim.Optimizer:
        return make_optimizer(trainable + method_parameters(method), name=config.optimizer, lr=config.lr,
                              weight_decay=config.weight_decay, momentum=config.momentum)

    optimizer = new_optimizer()
    indexed = bool(getattr(method, "sample_index", False))
    epoch_end = getattr(method, "epoch_end", None)
    identity = run_identity(method, config)
    steps_per_epoch = count_steps(adapter, config=config)
    total_steps = steps_per_epoch * config.epochs
    log: list[dict[str, Any]] = []
    start_epoch = 0
    directory = Path(state_dir) if state_dir is not None else None
    if resume:
        if directory is None:
            raise InputError("--resume needs the output directory of the interrupted run.")
        state = load_training_state(directory)
        check_same_run(state.get("run"), identity)
        model.load_state_dict(state["model"])
        restore_method_state(method, state.get("method", {}))  # first: it names a changed option more clearly than the optimizer would
        optimizer.load_state_dict(state["optimizer"])
        # States written before every generator was saved hold torch's CPU state alone.
        rng_states.restore(state["rng"] if "rng" in state else {"torch": state["torch_rng"]})
        log, start_epoch = list(state["log"]), int(state["epoch"])
        done = start_epoch * steps_per_epoch
        progress(stage, done, total_steps, f"resumed after epoch {start_epoch}/{config.epochs}")
    for epoch in range(start_epoch, config.epochs):
        set_training_modes(model)
        live = EpochMeans(epoch=epoch, epochs=config.epochs)
        for index, batch in enumerate(shuffled_batches(adapter, config=config, epoch=epoch, index=indexed)):
            step = epoch * steps_per_epoch + index
            optimizer.zero_grad(set_to_none=True)
            entry = method.gradients(model, adapter, batch, step=step, total_steps=total_steps, device=device)
            optimizer.step()
            log.append({"epoch": epoch, "step": step, **entry})
            live.add(entry)
            progress(stage, step + 1, total_steps, live.status())
        if callable(epoch_end):
            ended = epoch_end(model, view, epoch=epoch, epochs=config.epochs, device=device)
            if ended is not None:
                if ended.figures:
                    log[-1]["epoch_end"] = ended.figures
                if ended.fresh_optimizer:
                    optimizer = new_optimizer()
        if directory is not None:
            save_training_state(directory, epoch=epoch + 1, model=model, optimizer=optimizer, log=log,
                                method_state=method_state(method), identity=identity)
    model.eval()
    return log
