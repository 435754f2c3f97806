"""Reading the adapter's batches: labels and bias values checked once, samples numbered globally."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch

from biasaudit.data.adapter import Adapter
from biasaudit.errors import AdapterError, DataError


def int_column(batch: Mapping[str, Any], key: str, *, what: str, split: str) -> np.ndarray:
    if key not in batch:
        raise DataError(f"Batches of split {split!r} have no {what} key {key!r}; keys present: {', '.join(map(str, batch))}.")
    values = batch[key]
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"The {what} values {key!r} of split {split!r} must be a 1-D integer tensor; "
            f"got dtype {array.dtype} and shape {array.shape}."
        )
    return array.astype(np.int64)


def checked_labels(batch: Mapping[str, Any], adapter: Adapter, *, split: str) -> np.ndarray:
    labels = int_column(batch, adapter.label_key, what="label", split=split)
    if labels.size and (labels.min() < 0 or labels.max() >= adapter.num_classes):
        bad = labels[(labels < 0) | (labels >= adapter.num_classes)][0]
        raise DataError(
            f"Split {split!r} has label {bad}, outside [0, {adapter.num_classes}) for num_classes={adapter.num_classes}."
        )
    return labels


def check_raw_inputs(batch: Mapping[str, Any], adapter: Adapter, *, split: str) -> None:
    """The raw inputs the impairments will touch are where, and what, the adapter declared."""
    for modality in adapter.modalities:
        for key in (modality.key, modality.mask_key):
            if key is not None and key not in batch:
                raise DataError(
                    f"Batches of split {split!r} have no key {key!r}, which modality {modality.name!r} declares; "
                    f"keys present: {', '.join(map(str, batch))}."
                )
        raw = batch[modality.batch_key]
        if modality.kind == "text" and not (isinstance(raw, (list, tuple)) and all(isinstance(t, str) for t in raw)):
            raise DataError(
                f"Text modality {modality.name!r} of split {split!r} is a {type(raw).__name__} under key {modality.key!r}; "
                "expected a list of strings (raw text; tokenise in prepare, or declare the kind 'tokens')."
            )
        if modality.kind == "tokens" and not (isinstance(raw, torch.Tensor) and raw.ndim == 2 and not raw.is_floating_point()):
            what = (
                f"a {raw.dtype} tensor of shape {tuple(raw.shape)}"
                if isinstance(raw, torch.Tensor)
                else f"a {type(raw).__name__}"
            )
            raise DataError(
                f"Token modality {modality.name!r} of split {split!r} is {what} under key {modality.key!r}; expected "
                "integer token ids [batch, length]."
            )
        if modality.kind != "image":
            continue
        pixels = batch[modality.batch_key]
        if not isinstance(pixels, torch.Tensor) or pixels.ndim not in (3, 4) or (pixels.ndim == 4 and pixels.shape[1] > 4):
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise DataError(
                f"Image modality {modality.name!r} of split {split!r} has raw input of shape {shape}; "
                "expected a tensor [B, H, W] or channels-first [B, C, H, W] with C <= 4."
            )
        low, high = modality.value_range
        if pixels.numel():
            found_low, found_high = float(pixels.min()), float(pixels.max())
            if found_low < low - 1e-6 or found_high > high + 1e-6:
                raise DataError(
                    f"Image modality {modality.name!r} of split {split!r} has raw pixels from {found_low:g} to "
                    f"{found_high:g}, outside its value_range {modality.value_range}; declare value_range=(low, high) "
                    "to match the raw pixels."
                )


@dataclass(frozen=True, eq=False)  # arrays: compare the fields with numpy
class SplitLabels:
    """Every sample's global index, label and bias value (None without a bias key) of one split, from one read: what
    the JSD priors, MMDB's margins and the ceilings' probe sample count, read once and shared."""

    indices: np.ndarray
    labels: np.ndarray
    bias: np.ndarray | None


Result = TypeVar("Result")

# Within a run (a scan, or fix's audits and training), each split's labels are read once: the reads made so far, by
# (adapter, split). A context variable, so nothing is kept between runs and concurrent runs keep their own.
_RUN_READS: ContextVar[dict[tuple[int, str], tuple[Adapter, SplitLabels]] | None] = ContextVar(
    "biasaudit_run_reads", default=None
)


@contextmanager
def reads_shared_by_the_run() -> Iterator[None]:
    """Inside, read_split_labels reads each split of an adapter once (the JSD priors, the ceilings' probe sample and
    MMDB's margins share one read); a nested block joins the outer one. The adapter's data() must yield the same
    samples on every pass, as a scan already requires."""
    if _RUN_READS.get() is not None:
        yield
        return
    token = _RUN_READS.set({})
    try:
        yield
    finally:
        _RUN_READS.reset(token)


def shares_reads(function: Callable[..., Result]) -> Callable[..., Result]:
    """`function` runs inside reads_shared_by_the_run()."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Result:
        with reads_shared_by_the_run():
            return function(*args, **kwargs)

    return run


def read_split_labels(adapter: Adapter, split: str, *, batch_size: int) -> SplitLabels:
    """Every label and bias value of a split, with the global indices; read once per run (reads_shared_by_the_run)."""
    shared = _RUN_READS.get()
    # A copy with other mutes (scanning.with_mute_overrides) reads the same data. Its own attribute only: a view that
    # forwards attributes (training's TrainingView, without the held-out rows) reads other data.
    source = vars(adapter).get("reads_as", adapter)
    key = (id(source), split)
    if shared is not None and key in shared:
        return shared[key][1]
    read = _read_split_labels(adapter, split, batch_size=batch_size)
    if shared is not None:
        shared[key] = (source, read)  # the adapter is held so that its id is not reused meanwhile
    return read


def _read_split_labels(adapter: Adapter, split: str, *, batch_size: int) -> SplitLabels:
    indices, labels, bias = [], [], []
    for batch_indices, batch in indexed_batches(adapter, split, batch_size=batch_size):
        indices.append(batch_indices)
        labels.append(checked_labels(batch, adapter, split=split))
        if adapter.bias_key is not None:
            bias.append(bias_values(batch, adapter, split=split))
    empty = np.zeros(0, dtype=np.int64)
    return SplitLabels(
        np.concatenate(indices) if indices else empty,
        np.concatenate(labels) if labels else empty,
        (np.concatenate(bias) if bias else empty) if adapter.bias_key is not None else None,
    )


def labels_and_bias(
    adapter: Adapter, split: str, *, batch_size: int, purpose: str, read: SplitLabels | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every label and bias value of a split, checked: what the JSD priors and MMDB's margins count. `read`: the split's
    labels when the caller has read them already."""
    read = read_split_labels(adapter, split, batch_size=batch_size) if read is None else read
    if not read.labels.size:
        raise DataError(f"Split {split!r} is empty; {purpose} need its labels and bias values.")
    if read.bias is None:
        raise AdapterError(f"{purpose} need bias values, and the adapter declares no bias_key.")
    return read.labels, read.bias


def bias_values(batch: Mapping[str, Any], adapter: Adapter, *, split: str) -> np.ndarray:
    if adapter.bias_key is None:  # a caller bug: bias values are read only from an adapter that declares their key
        raise ValueError("bias values were read from an adapter that declares no bias_key")
    values = int_column(batch, adapter.bias_key, what="bias", split=split)
    if values.size and values.min() < 0:
        raise DataError(
            f"Bias values {adapter.bias_key!r} of split {split!r} must be non-negative integers; found {int(values.min())}."
        )
    return values


def bias_range(adapter: Adapter, *arrays: np.ndarray) -> int:
    """How many bias values to make room for: the named ones and every value seen."""
    seen = max((int(a.max()) for a in arrays if a.size), default=-1)
    return max(len(adapter.bias_names or ()), seen + 1)


def adapter_batches(adapter: Adapter, split: str, *, batch_size: int) -> Iterator[Mapping[str, Any]]:
    """adapter.data(split), checked where it enters: an iterable of dict batches."""
    batches = adapter.data(split, batch_size=batch_size)
    if batches is None or isinstance(batches, (str, bytes, Mapping)) or not hasattr(batches, "__iter__"):
        raise AdapterError(
            f"The adapter's data({split!r}, batch_size={batch_size}) returned {type(batches).__name__}; expected an "
            "iterable of dict batches (e.g. a generator that yields them)."
        )
    for batch in batches:
        if not isinstance(batch, Mapping):
            raise AdapterError(
                f"The adapter's data({split!r}, ...) yielded a {type(batch).__name__}; expected a dict batch "
                "{modality key: raw input, label key: labels, ...}."
            )
        yield batch


def check_split(adapter: Adapter, split: str) -> None:
    if split not in adapter.splits:
        raise DataError(f"Split {split!r} is not offered by the adapter. Available: {', '.join(adapter.splits)}.")


def indexed_batches(adapter: Adapter, split: str, *, batch_size: int) -> Iterator[tuple[np.ndarray, Mapping[str, Any]]]:
    """Batches of a split with the global index of each sample (the key of its random streams)."""
    check_split(adapter, split)
    offset = 0
    for batch in adapter_batches(adapter, split, batch_size=batch_size):
        n = len(checked_labels(batch, adapter, split=split))
        check_raw_inputs(batch, adapter, split=split)
        yield np.arange(offset, offset + n), batch
        offset += n


def take_rows(batch: Mapping[str, Any], rows: np.ndarray, *, size: int | None = None) -> dict[str, Any]:
    """The batch restricted to some rows: every tensor, array, list or tuple with one entry per sample (`size`
    entries; by default as many as the first value has) is indexed; any other value (a shared setting) is kept."""
    if size is None:
        size = len(next(iter(batch.values()))) if batch else 0
    index = torch.as_tensor(rows, dtype=torch.long)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == size:
            out[key] = value.index_select(0, index.to(value.device))  # a third of advanced indexing's cost per call
        elif isinstance(value, np.ndarray) and value.ndim and value.shape[0] == size:
            out[key] = value[rows]
        elif isinstance(value, (list, tuple)) and len(value) == size:
            out[key] = type(value)(value[i] for i in rows) if isinstance(value, tuple) else [value[i] for i in rows]
        else:
            out[key] = value
    return out
