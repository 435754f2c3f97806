"""Reading the adapter's batches: labels and bias values checked once, samples numbered globally."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np
import torch

from biasaudit.adapter import Adapter
from biasaudit.errors import DataError


def int_column(batch: Mapping[str, Any], key: str, *, what: str, split: str) -> np.ndarray:
    if key not in batch:
        raise DataError(f"Batches of split {split!r} have no {what} key {key!r}; keys present: {', '.join(map(str, batch))}.")
    values = batch[key]
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"The {what} values {key!r} of split {split!r} must be a 1-D integer tensor; got dtype {array.dtype} and shape {array.shape}.")
    return array.astype(np.int64)


def checked_labels(batch: Mapping[str, Any], adapter: Adapter, *, split: str) -> np.ndarray:
    labels = int_column(batch, adapter.label_key, what="label", split=split)
    if labels.size and (labels.min() < 0 or labels.max() >= adapter.num_classes):
        bad = labels[(labels < 0) | (labels >= adapter.num_classes)][0]
        raise DataError(f"Split {split!r} has label {bad}, outside [0, {adapter.num_classes}) for num_classes={adapter.num_classes}.")
    return labels


def indexed_batches(adapter: Adapter, split: str, *, batch_size: int) -> Iterator[tuple[np.ndarray, Mapping[str, Any]]]:
    """Batches of a split with the global index of each sample (the key of its random streams)."""
    if split not in adapter.splits:
        raise DataError(f"Split {split!r} is not offered by the adapter. Available: {', '.join(adapter.splits)}.")
    offset = 0
    for batch in adapter.data(split, batch_size=batch_size):
        n = len(checked_labels(batch, adapter, split=split))
        yield np.arange(offset, offset + n), batch
        offset += n
