"""The training loop shared by every `fix` method: seeded shuffling (epoch_batches.py), a checkpoint every epoch and
exact resume (training_state.py), frozen parameters left frozen, and a per-step log. A method is a driver
(driver.py): it fills the gradients of one batch, and may act at each epoch's end.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch
from torch import nn

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import checked_labels, read_split_labels
from biasaudit.errors import InputError
from biasaudit._core.progress import Progress, with_status
from biasaudit.training import rng_states
from biasaudit.training.driver import TrainingMethod, method_parameters, method_state, restore_method_state
from biasaudit.training.data_parallel import (
    Processes,
    average_buffers,
    average_gradients,
    broadcast_start,
    check_data_parallel,
    gathered,
    training_processes,
)
from biasaudit.training.epoch_batches import SAMPLE_INDEX, epoch_shape, process_batches, without_index
from biasaudit.training.feature_cache import CacheSettings
from biasaudit.training.live_status import EpochMeans
from biasaudit.training.run_cache import run_cache
from biasaudit.training.model_modes import set_training_modes
from biasaudit.training.optimizers import make_optimizer
from biasaudit.training.precision import StepPrecision
from biasaudit.training.train_config import TrainConfig
from biasaudit.training.training_state import check_same_run, load_training_state, run_identity, save_training_state
from biasaudit.training.training_view import training_view


def train(
    model: nn.Module,
    adapter: Adapter,
    method: TrainingMethod,
    *,
    config: TrainConfig,
    state_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    stage: str = "train",
    distributed: bool = False,
    cache: CacheSettings | None = None,
    cache_report: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train in place; return the per-step log. `state_dir` gets `last.pt` after every epoch. `progress`
    gets `stage`, the step count and a live line of this epoch's mean losses (live_status.py). `distributed`: train
    data-parallel over the processes of the initialised process group (data_parallel.py); rank 0 alone writes the state.
    `cache`: the frozen-encoder feature cache's settings (feature_cache.py; None: off); `cache_report` gets what it
    did (its settings and `note`, one sentence) before the first step.

    Every global generator the run draws from is seeded from `config.seed` and handed back as it was afterwards
    (rng_states.py); parts of the model whose parameters are all frozen train in eval mode (model_modes.py)."""
    with rng_states.seeded_run(config.seed):
        return _train(
            model,
            adapter,
            method,
            config=config,
            state_dir=state_dir,
            resume=resume,
            progress=progress,
            stage=stage,
            processes=training_processes(distributed),
            cache=cache or CacheSettings(mode="off"),
            cache_report=cache_report,
        )


def _train(
    model: nn.Module,
    adapter: Adapter,
    method: TrainingMethod,
    *,
    config: TrainConfig,
    state_dir: str | os.PathLike | None,
    resume: bool,
    progress: Progress | None,
    stage: str,
    processes: Processes,
    cache: CacheSettings,
    cache_report: Callable[[dict[str, Any]], None] | None,
) -> list[dict[str, Any]]:
    from biasaudit.scanning.config import resolve_device

    progress = with_status(progress)
    device = resolve_device(config.device)
    check_training = getattr(method, "check_config", None)
    if callable(check_training):
        check_training(config)  # e.g. JTT needs epochs for both stages: refused before any work
    model.to(device)
    # Rank 0's weights everywhere before prepare, which may keep them (JTT's and D&R's starting weights, MMDB's clusters).
    broadcast_start([*model.parameters(), *model.buffers()], processes)
    # Runs right after the seeding: a method that draws its own parameters seeds a generator from
    # torch.initial_seed(), i.e. from the run seed. It sees train without the held-out rows.
    view = training_view(adapter, config)
    method.prepare(model, view, device=device)
    shape = epoch_shape(adapter, config=config)  # after prepare, whose error names what the method needs of the data
    check_data_parallel(processes, smallest=shape.smallest, batch_size=config.batch_size)
    if processes.world > 1:
        # Every process checks every label (and bias value) now: a bad one found in one process's rows mid-epoch would
        # stop that process alone while the others wait for it in the step's collectives.
        read_split_labels(adapter, config.split, batch_size=config.batch_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise InputError("The model has no trainable parameter (every requires_grad is False); nothing can be fixed.")
    # After the trainable check: fp16 refuses float16 weights and a driver without loss_scale, before any work.
    precision = StepPrecision(config.precision, device, trainable=trainable, method=method)
    broadcast_start(method_parameters(method), processes)  # a method's own parameters (separate heads), made in prepare
    synchronised = bool(getattr(method, "synchronised", False))

    def new_optimizer() -> torch.optim.Optimizer:
        return make_optimizer(
            trainable + method_parameters(method),
            name=config.optimizer,
            lr=config.lr,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
        )

    optimizer = new_optimizer()
    indexed = bool(getattr(method, "sample_index", False))
    epoch_end = getattr(method, "epoch_end", None)
    identity = run_identity(method, config, world=processes.world)
    steps_per_epoch = shape.steps
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
        restore_method_state(
            method, state.get("method", {})
        )  # first: it names a changed option more clearly than the optimizer would
        optimizer.load_state_dict(state["optimizer"])
        precision.load_state_dict(state.get("scaler"))  # fp16: the scale the interrupted run had reached
        # States written before every generator was saved hold torch's CPU state alone.
        by_rank = state.get("rng_by_rank")  # a data-parallel run's: each process continues its own generators
        rng_states.restore(
            by_rank[processes.rank] if by_rank else state["rng"] if "rng" in state else {"torch": state["torch_rng"]}
        )
        log, start_epoch = list(state["log"]), int(state["epoch"])
        done = start_epoch * steps_per_epoch
        progress(stage, done, total_steps, f"resumed after epoch {start_epoch}/{config.epochs}")
    # After a resume's load: the cache is filled from the weights training continues with (feature_cache.py).
    with run_cache(
        model, adapter, config=config, settings=cache, processes=processes, device=device, report=cache_report
    ) as features:
        for epoch in range(start_epoch, config.epochs):
            set_training_modes(model)
            live = EpochMeans(epoch=epoch, epochs=config.epochs)
            batches = process_batches(
                adapter,
                config=config,
                epoch=epoch,
                index=indexed or features is not None,
                rank=processes.rank,
                world=processes.world,
            )
            for index, part in enumerate(batches):
                step = epoch * steps_per_epoch + index
                optimizer.zero_grad(set_to_none=True)
                share = processes.share(len(checked_labels(part.batch, adapter, split=config.split)), part.size)
                batch = part.batch if indexed or features is None else without_index(part.batch)
                # fp16: the driver scales its losses by loss_scale (the scaler's S); averaging over the processes is
                # linear, so it commutes with S, and precision.step unscales before the optimizer reads the gradients.
                scaled = precision.keywords()
                with (
                    features.serving(part.batch[SAMPLE_INDEX]) if features is not None else nullcontext(),
                    precision.autocast(),
                ):
                    entry = method.gradients(
                        model, adapter, batch, step=step, total_steps=total_steps, device=device, share=share, **scaled
                    )
                if not synchronised:
                    average_gradients(trainable + method_parameters(method))
                if precision.step(optimizer):  # overflowed: the weights stay as they were, and the log says so
                    entry = {**entry, "skipped": True, "loss_scale": scaled["loss_scale"]}
                log.append({"epoch": epoch, "step": step, **entry})
                live.add(entry)
                progress(stage, step + 1, total_steps, live.status())
            average_buffers(model, processes)
            if callable(epoch_end):
                ended = epoch_end(model, view, epoch=epoch, epochs=config.epochs, device=device)
                if ended is not None:
                    if ended.figures:
                        log[-1]["epoch_end"] = ended.figures
                    if ended.fresh_optimizer:
                        optimizer = new_optimizer()
            rngs = gathered(rng_states.capture(), processes) if directory is not None else []
            if directory is not None and processes.writes:
                save_training_state(
                    directory,
                    epoch=epoch + 1,
                    model=model,
                    optimizer=optimizer,
                    log=log,
                    method_state=method_state(method),
                    identity=identity,
                    rng_by_rank=rngs if processes.world > 1 else None,
                    scaler=precision.state_dict(),
                )
    model.eval()
    return log
