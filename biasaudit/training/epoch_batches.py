"""The batches an epoch of biasaudit's loop trains on (loop.py): the training split without its held-out rows, shuffled.

The adapter yields batches in a fixed order (scans must be reproducible), so the loop shuffles with a generator seeded
by (seed, epoch). Samples readable by index (sample_access.py: a DataLoader over a map-style dataset) are shuffled
whole by a permutation of their indices, loading one batch at a time. Other data pass through a buffer: the loop
gathers up to `shuffle_buffer` samples, permutes them and re-batches; within the buffer this is a true shuffle, beyond
it an approximation that keeps memory bounded. The two agree batch for batch when the split fits the buffer. Because
the permutation depends only on (seed, epoch), a resumed run sees the same batches. Under data parallelism every
process draws the same global batches and trains on its part of each (process_batches). A method with
`sample_index = True` gets each batch with the SAMPLE_INDEX column (driver.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import adapter_batches, checked_labels, take_rows
from biasaudit.data.impairments import other_keys, padding_side, widen_tokens
from biasaudit.data.modality import Modality
from biasaudit._core.randomness import uniform
from biasaudit.errors import AdapterError, InputError
from biasaudit.training.sample_access import indexed_split
from biasaudit.training.train_config import TrainConfig


SAMPLE_INDEX = "biasaudit_sample_index"  # the column of global training-sample indices (methods with sample_index)


def without_index(batch: Mapping[str, Any]) -> Mapping[str, Any]:
    """The batch as the adapter yielded it: without the loop's SAMPLE_INDEX column."""
    return {k: v for k, v in batch.items() if k != SAMPLE_INDEX} if SAMPLE_INDEX in batch else batch


def token_keys(modality: Modality) -> tuple[str, str]:
    """A token modality's (ids key, attention-mask key); Modality refuses a token modality without either."""
    if modality.key is None or modality.mask_key is None:
        raise AdapterError(f"Token modality {modality.name!r} has no key or no mask_key.")
    return modality.key, modality.mask_key


def concat(batches: list[Mapping[str, Any]], modalities: Sequence[Modality] = ()) -> dict[str, Any]:
    """One batch of all rows. Token ids padded per batch (a Hugging Face collator pads each batch to its own longest
    text) are first padded to the widest batch, on the tokenizer's side: the declared one, else left when any batch
    shows left padding."""
    batches = list(batches)
    for modality in modalities:
        if modality.kind != "tokens":
            continue
        key, mask_key = token_keys(modality)
        if len({b[key].shape[1] for b in batches}) < 2:
            continue
        sides = {padding_side(b[mask_key], modality) for b in batches}
        side = "left" if "left" in sides else "right"
        width = max(b[key].shape[1] for b in batches)
        others = other_keys(modalities, modality)
        batches = [widen_tokens(b, modality, width, side=side, others=others) for b in batches]
    out: dict[str, Any] = {}
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


def training_batches(
    adapter: Adapter, *, config: TrainConfig, batch_size: int | None = None, index: bool = False
) -> Iterator[Mapping[str, Any]]:
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


@dataclass(frozen=True)
class Share:
    """This process's part of one global training batch: its rows (`batch`) and the global batch's size (`size`)."""

    batch: dict[str, Any]
    size: int


@dataclass(frozen=True)
class EpochShape:
    """What every epoch looks like: optimiser `steps`, and the `smallest` global batch (a data-parallel run needs at
    least one row per process in every batch)."""

    steps: int
    smallest: int


def shuffled_batches(adapter: Adapter, *, config: TrainConfig, epoch: int, index: bool = False) -> Iterator[dict[str, Any]]:
    """The epoch's global training batches (one process); with `index`, each carries the SAMPLE_INDEX column."""
    for share in process_batches(adapter, config=config, epoch=epoch, index=index):
        yield share.batch


def process_batches(
    adapter: Adapter, *, config: TrainConfig, epoch: int, index: bool = False, rank: int = 0, world: int = 1
) -> Iterator[Share]:
    """The epoch's batches as process `rank` of `world` trains on them: each global batch (the same on every process,
    shuffled from (seed, epoch)) split by position into `world` contiguous parts, part `rank` here; no row padded or
    repeated. Samples readable by index (sample_access.py) are permuted whole and each process loads only its rows;
    others pass through the bounded shuffle buffer."""
    rng = np.random.default_rng([config.seed, epoch, 7])
    indexed = indexed_split(adapter, config.split)
    if indexed is not None:
        kept = np.flatnonzero(~holdout_rows(np.arange(indexed.size), config=config))
        order = kept[rng.permutation(kept.size)]
        global_rows = [order[lo : lo + config.batch_size] for lo in range(0, order.size, config.batch_size)]
        mine = [rows[_part(rows.size, rank, world)] for rows in global_rows]
        for rows, batch in zip(global_rows, indexed.batches(mine), strict=True):
            checked = checked_batch(batch, config.split)
            checked_labels(checked, adapter, split=config.split)
            if index:
                checked = {**checked, SAMPLE_INDEX: torch.as_tensor(rows[_part(rows.size, rank, world)], dtype=torch.long)}
            yield Share(checked, int(rows.size))
        return
    buffer: list[Mapping[str, Any]] = []
    held = 0

    def flush() -> Iterator[Share]:
        merged = concat(buffer, adapter.modalities)
        order = rng.permutation(held)
        for lo in range(0, held, config.batch_size):
            rows = order[lo : lo + config.batch_size]
            yield Share(take_rows(merged, rows[_part(rows.size, rank, world)]), int(rows.size))

    for batch in training_batches(adapter, config=config, index=index):
        buffer.append(batch)
        held += len(checked_labels(batch, adapter, split=config.split))
        if held >= config.shuffle_buffer:
            yield from flush()
            buffer, held = [], 0
    if held:
        yield from flush()


def checked_batch(batch: Any, split: str) -> dict[str, Any]:
    """A batch the loader collated from dataset items: a dict (the adapter contract's batch), or an AdapterError."""
    if not isinstance(batch, Mapping):
        raise AdapterError(
            f"The DataLoader of split {split!r} collates {type(batch).__name__} batches; expected dicts with one key per "
            "modality and the label (have the Dataset return dicts, or give the loader a collate_fn that builds one)."
        )
    return dict(batch)


def _part(size: int, rank: int, world: int) -> slice:
    """Rows of part `rank` of a batch of `size` split into `world` contiguous parts that differ by at most one row."""
    base, extra = divmod(size, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def epoch_shape(adapter: Adapter, *, config: TrainConfig) -> EpochShape:
    """Steps per epoch and the smallest batch, counted the way process_batches cuts them: by index, ceil(kept /
    batch_size); through the buffer, which is emptied once it holds at least shuffle_buffer samples (so it can hold
    more: whole adapter batches are added), ceil(held / batch_size) per flush. (Assuming flushes of exactly
    shuffle_buffer overcounted, so a schedule over the steps, BalGrad's lambda, never reached its end.)"""
    indexed = indexed_split(adapter, config.split)
    if indexed is not None:
        flushes = [int((~holdout_rows(np.arange(indexed.size), config=config)).sum())]
    else:
        flushes, held = [], 0
        for batch in training_batches(adapter, config=config):
            held += len(checked_labels(batch, adapter, split=config.split))
            if held >= config.shuffle_buffer:
                flushes.append(held)
                held = 0
        flushes.append(held)
    if sum(flushes) == 0:
        raise InputError(f"Split {config.split!r} is empty; there is nothing to train on.")
    sizes = [
        size
        for held in flushes
        if held
        for size in (config.batch_size * (held >= config.batch_size), held % config.batch_size)
        if size
    ]
    return EpochShape(steps=sum(-(-held // config.batch_size) for held in flushes), smallest=min(sizes))


def count_steps(adapter: Adapter, *, config: TrainConfig) -> int:
    """Optimiser steps per epoch (epoch_shape)."""
    return epoch_shape(adapter, config=config).steps
