"""Reading training samples by index, when the adapter's data allow it: what keeps fix's memory bounded.

biasaudit's loop shuffles the training split itself (epoch_batches.py). When the adapter's data('train') is a torch
DataLoader over a map-style dataset read in order (a SequentialSampler, automatic batching), or biasaudit's
LoaderAdapter over one, the sample at position i of the split IS dataset[i]: the loop draws a permutation of the
indices and has the loader's own collate_fn (and its workers) build each batch from them, so memory holds one batch
whatever the split's size, and each process of a data-parallel run reads only its own rows. Any other data (a
generator, an iterable dataset, a custom sampler) is read in order through the bounded shuffle buffer instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, SequentialSampler

from biasaudit.adapters.dataloaders import reading_options
from biasaudit.data.adapter import Adapter


@dataclass(frozen=True)
class IndexedSplit:
    """A split read by sample index: `loader` is the adapter's own DataLoader (its dataset, collate_fn and workers),
    `size` the number of samples."""

    loader: DataLoader
    size: int

    def batches(self, index_lists: Iterable[np.ndarray]) -> Iterator[Mapping[str, Any]]:
        """One collated batch per list of sample indices, in the lists' order."""
        batch_sampler = [[int(i) for i in rows] for rows in index_lists]
        return iter(DataLoader(self.loader.dataset, batch_sampler=batch_sampler, **reading_options(self.loader)))


def indexed_split(adapter: Adapter, split: str) -> IndexedSplit | None:
    """The split as an IndexedSplit when its samples can be read by index (see the module's docstring), else None."""
    data = adapter.data(split, batch_size=1)
    loader = data if isinstance(data, DataLoader) else getattr(data, "loader", None)  # LoaderAdapter's DictBatches
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return None
    if not isinstance(loader.sampler, SequentialSampler) or not isinstance(loader.batch_sampler, BatchSampler):
        return None
    try:
        size = len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
    return IndexedSplit(loader, size)
