"""Reading a user's torch DataLoader the way an audit needs it: a fixed order, at the batch size biasaudit asks for.

A loader that shuffles is refused rather than silently re-ordered: its order would make every scan different,
and `biasaudit fix` shuffles training batches itself, from its seed. The loader's batches are re-cut at the
requested batch size (a new DataLoader over the same dataset, sampler and collate_fn, with drop_last off): the
audit's numbers do not depend on the batch size (impairments are drawn per sample), memory does, and `fix` trains
at a batch size of its own. A loader whose batches come from a custom batch_sampler (e.g. texts grouped by length)
or whose automatic batching is off (batch_size=None) is read as it is: its batches are its own.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Iterator, Mapping

from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SubsetRandomSampler, WeightedRandomSampler
from torch.utils.data.distributed import DistributedSampler

from biasaudit.errors import AdapterError, DataError

_RANDOM_SAMPLERS = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)


def shuffling_sampler(loader: DataLoader) -> str | None:
    """The name of the sampler that draws the loader's order at random, or None when the order is fixed."""
    for outer in (loader.batch_sampler, loader.sampler):
        sampler, depth = outer, 0
        while sampler is not None and depth < 4:  # a batch sampler wraps a sampler, which may wrap another
            if isinstance(sampler, _RANDOM_SAMPLERS):
                return type(sampler).__name__
            if isinstance(sampler, DistributedSampler) and sampler.shuffle:
                return f"{type(sampler).__name__} with shuffle=True"
            if getattr(sampler, "shuffle", False) is True:
                return f"{type(sampler).__name__} with shuffle=True"
            sampler, depth = getattr(sampler, "sampler", None), depth + 1
    return None


def check_loader(loader: Any, split: str) -> DataLoader:
    if not isinstance(loader, DataLoader):
        raise AdapterError(f"loaders[{split!r}] is a {type(loader).__name__}; expected a torch.utils.data.DataLoader.")
    random = shuffling_sampler(loader)
    if random is not None:
        raise AdapterError(
            f"The DataLoader of split {split!r} shuffles (its sampler is a {random}); pass shuffle=False "
            "(an audit needs a fixed order, and biasaudit fix shuffles training batches itself, with its seed)."
        )
    return loader


def rebatched(loader: DataLoader, batch_size: int) -> DataLoader:
    """The loader's samples in its order, cut into batches of batch_size (see the module's docstring)."""
    if loader.batch_size is None:
        return loader
    options: dict[str, Any] = {"batch_size": batch_size, "drop_last": False, **reading_options(loader)}
    if not isinstance(loader.dataset, IterableDataset):  # an iterable dataset has no sampler: it yields its own order
        options["sampler"] = loader.sampler
    return DataLoader(loader.dataset, **options)


def reading_options(loader: DataLoader) -> dict[str, Any]:
    """How the loader reads and collates its samples (collate_fn, workers, pinning, ...): what a new DataLoader over
    the same dataset keeps when it cuts the samples into other batches."""
    options: dict[str, Any] = {
        "collate_fn": loader.collate_fn,
        "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "worker_init_fn": loader.worker_init_fn,
        "timeout": loader.timeout,
        "multiprocessing_context": loader.multiprocessing_context,
    }
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    return options


class DictBatches:
    """A loader's batches, each checked to be a dict (the adapter contract's batch); has len() when the loader has."""

    def __init__(self, loader: DataLoader, split: str) -> None:
        self.loader, self.split = loader, split

    def __len__(self) -> int:
        return len(self.loader)  # TypeError for an iterable dataset: the count is unknown

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        for batch in self.loader:
            if not isinstance(batch, Mapping):
                raise DataError(
                    f"The DataLoader of split {self.split!r} yields {type(batch).__name__} batches; expected dicts with one key "
                    "per modality and the label (have the Dataset return dicts, or give the loader a collate_fn that builds one)."
                )
            yield batch
