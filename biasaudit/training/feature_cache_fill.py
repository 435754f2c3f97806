"""The fill pass of the feature cache (feature_cache.py): one eval-mode pass without gradient over the training
samples, each kept frozen module's output written to its Store as it leaves the module (before an in-place operation
after it could change it), with each sample's row and the signature of the call that computed it: the shapes and
dtypes of the module's input tensors, the batch's row count first among them.

Kernels may round a row differently for another row count or another padded width, so a training call is served
only when its signature is the one each of its samples was computed with (feature_cache.py). The pass therefore
batches the samples as training does (epoch_batches.process_batches): a split readable by index (sample_access.py)
in batches of the training's batch size collated by the adapter's own loader, other data through the shuffle buffers
(merged, token ids padded to the buffer's widest) cut into batches of that size. Training's batches hold other samples
each epoch but always that size, but for one shorter last batch (per buffer). So the fill's last batch is topped up
with samples computed before (computed again, stored once): every sample is computed in a batch of the full size, but
those of a buffer smaller than one batch, which training trains as one batch of that size in every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from biasaudit.data.adapter import Adapter
from biasaudit.data.batches import checked_labels, read_split_labels, take_rows
from biasaudit.errors import DataError, InputError
from biasaudit.training.epoch_batches import SAMPLE_INDEX, checked_batch, concat, holdout_rows, training_batches, without_index
from biasaudit.training.feature_cache_probe import Candidate, fill_problem, tensors_in
from biasaudit.training.feature_cache_store import Store, file_stem, state_hash, state_version
from biasaudit.training.sample_access import indexed_split
from biasaudit.training.train_config import TrainConfig

OFF_HINT = "use --feature-cache auto to leave it out, or off"


@dataclass
class Entry:
    """One cached module: its name, the module, its output spec, its rows, its state when the cache was filled, and
    per row the signature (an id in `known`) of the call that computed it."""

    name: str
    module: nn.Module
    spec: Any
    store: Store
    digest: str
    version: int = 0
    signatures: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    known: dict[tuple[Any, ...], int] = field(default_factory=dict)


def signature(args: Any, kwargs: Any) -> tuple[Any, ...]:
    """The shapes and dtypes of a call's input tensors: what decides which kernels round its rows."""
    return tuple((tuple(t.shape), t.dtype) for t in tensors_in((args, kwargs)))


def split_size(adapter: Adapter, *, config: TrainConfig) -> tuple[int, int]:
    """(samples in the training split, of them not held out): the cache's index space and its rows."""
    indexed = indexed_split(adapter, config.split)
    total = (
        indexed.size
        if indexed is not None
        else len(read_split_labels(adapter, config.split, batch_size=config.batch_size).indices)
    )
    return total, int((~holdout_rows(np.arange(total), config=config)).sum())


def fill_batches(adapter: Adapter, *, config: TrainConfig) -> Iterator[tuple[dict[str, Any], int]]:
    """(a batch with the SAMPLE_INDEX column, how many of its first rows were computed before) (module docstring)."""
    indexed = indexed_split(adapter, config.split)
    if indexed is not None:
        kept = np.flatnonzero(~holdout_rows(np.arange(indexed.size), config=config))
        cuts = list(_cut(kept.size, config.batch_size))
        lists = [kept[rows] for rows, _ in cuts]
        for rows, (_, seen), batch in zip(lists, cuts, indexed.batches(lists), strict=True):
            yield {**checked_batch(batch, config.split), SAMPLE_INDEX: torch.as_tensor(rows, dtype=torch.long)}, seen
        return
    buffer: list[Mapping[str, Any]] = []
    held = 0
    for batch in training_batches(adapter, config=config, index=True):
        buffer.append(batch)
        held += len(checked_labels(batch, adapter, split=config.split))
        if held >= config.shuffle_buffer:
            merged = concat(buffer, adapter.modalities)
            yield from ((take_rows(merged, rows, size=held), seen) for rows, seen in _cut(held, config.batch_size))
            buffer, held = [], 0
    if held:
        merged = concat(buffer, adapter.modalities)
        yield from ((take_rows(merged, rows, size=held), seen) for rows, seen in _cut(held, config.batch_size))


def _cut(held: int, size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Positions 0..held-1 in batches of `size` (fewer only when held < size), the last topped up with earlier ones."""
    for lo in range(0, held, size):
        if lo + size <= held or held < size:
            yield np.arange(lo, min(lo + size, held)), 0
        else:
            yield np.arange(held - size, held), lo - (held - size)


def fill(
    model: nn.Module,
    adapter: Adapter,
    kept: list[Candidate],
    batches: Iterator[tuple[dict[str, Any], int]],
    *,
    split: str,
    mode: str,
    directory: Path | None,
    samples: int,
    total: int,
    device: torch.device,
    excluded: dict[str, str],
) -> tuple[list[Entry], Tensor]:
    """(the entries of the modules still cached, each sample index's row (-1: none)). `samples`: how many training
    samples the pass must meet, `total`: the split's size; a module found uncacheable here is refused ("on" `mode`)
    or joins `excluded` ("auto")."""
    entries: dict[str, Entry] = {}
    for c in kept:
        digest = state_hash(c.module)
        stem = None
        if directory is not None:
            stem = file_stem(directory, c.name, split=split, samples=samples, digest=digest)
        store = Store(c.leaves, samples, stem=stem)
        entries[c.name] = Entry(c.name, c.module, c.spec, store, digest, signatures=torch.full((samples,), -1))
    slot = torch.full((total,), -1, dtype=torch.long)
    at = {"start": 0, "rows": 0, "seen": 0, "first": True}

    def writer(c: Candidate) -> Any:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if c.name not in entries:
                return
            leaves, problem = fill_problem(c, output, rows=at["rows"], first=bool(at["first"]))
            if problem is not None:
                if mode == "on":
                    raise InputError(uncacheable(c.name, problem))
                excluded[c.name] = problem
                entries.pop(c.name).store.close(remove=True)
                return
            entry = entries[c.name]
            entry.store.write(at["start"], [leaf[at["seen"] :] for leaf in leaves])
            known = entry.known.setdefault(signature(args, kwargs), len(entry.known))
            entry.signatures[at["start"] : at["start"] + at["rows"] - at["seen"]] = known

        return hook

    flags = {module: module.training for module in model.modules()}
    handles = [c.module.register_forward_hook(writer(c), with_kwargs=True) for c in kept]
    done = False
    try:
        model.eval()
        with torch.no_grad():
            for batch, seen in batches:
                rows = len(batch[SAMPLE_INDEX])
                indices = batch[SAMPLE_INDEX][seen:].to("cpu", torch.long)
                start, k = at["start"], len(indices)
                if start + k > samples or int(indices.max()) >= total or bool((slot[indices] >= 0).any()):
                    raise DataError(CHANGED)
                at["rows"], at["seen"] = rows, seen
                adapter.forward(model, adapter.prepare(without_index(batch), device=device))
                slot[indices] = torch.arange(start, start + k)
                at["start"], at["first"] = start + k, False
        if at["start"] != samples:
            raise DataError(CHANGED)
        done = True
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags.items():
            module.training = flag
        if not done:
            for entry in entries.values():
                entry.store.close(remove=True)
    for entry in entries.values():
        entry.version = state_version(entry.module)
    return list(entries.values()), slot


CHANGED = (
    "The training split gave other samples on the feature cache's pass than when it was counted, though the adapter "
    "declares deterministic_data = True; make data('train') yield the same samples on every pass or use "
    "--feature-cache off."
)


def uncacheable(name: str, problem: str) -> str:
    return f"Frozen module {name!r} {problem}, so its outputs cannot be cached ({OFF_HINT})."
