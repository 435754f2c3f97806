"""Where the feature cache (feature_cache.py) keeps a frozen module's outputs, and how it hands them back.

An output is a tensor, or tuples, lists and dicts of tensors (nested), batch first. `flatten` splits it into its
tensor leaves and a spec that `rebuild` turns back into the same structure. Each leaf is stored one row per training
sample, in CPU memory (a torch tensor) or in an np.memmap file of raw bytes (so every dtype, bfloat16 included, is
stored as it is). A served leaf gets the memory layout (strides) the module itself gave: a layer after it may choose
another kernel for another layout (channels-last against contiguous), and the cache must change no bit of training.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


class Unsupported(Exception):
    """An output the cache cannot hold; its message completes "its outputs cannot be cached: it ..."."""


TENSOR = "tensor"


def flatten(output: Any) -> tuple[list[Tensor], Any]:
    """(the tensor leaves in order, the spec of the structure around them)."""
    leaves: list[Tensor] = []

    def spec_of(value: Any) -> Any:
        if isinstance(value, Tensor):
            leaves.append(value)
            return TENSOR
        if value is None:
            return None
        if isinstance(value, (tuple, list)):
            return ("seq", type(value), [spec_of(item) for item in value])
        if isinstance(value, Mapping):
            return ("map", type(value), list(value.keys()), [spec_of(item) for item in value.values()])
        raise Unsupported(f"returns a {type(value).__name__} (expected tensors, or tuples, lists or dicts of tensors)")

    return leaves, spec_of(output)


def rebuild(spec: Any, leaves: Iterator[Tensor]) -> Any:
    """The structure `spec` describes, with the next leaves in place of its tensors."""
    if spec == TENSOR:
        return next(leaves)
    if spec is None:
        return None
    if spec[0] == "seq":
        kind, items = spec[1], [rebuild(s, leaves) for s in spec[2]]
        if kind is list or kind is tuple:
            return kind(items)
        return kind(*items) if hasattr(kind, "_fields") else kind(items)  # a namedtuple takes its fields one by one
    kind, keys, values = spec[1], spec[2], [rebuild(s, leaves) for s in spec[3]]
    if kind is dict or not all(isinstance(k, str) for k in keys):
        return kind(zip(keys, values, strict=True))
    return kind(**dict(zip(keys, values, strict=True)))  # e.g. a Hugging Face ModelOutput, built from keywords


def same_structure(spec: Any, other: Any) -> bool:
    return bool(spec == other)  # types and keys compare by equality; the lists of sub-specs element by element


@dataclass(frozen=True)
class Leaf:
    """One tensor of a module's output: its shape per sample, dtype, device, and the order of its dimensions from the
    outermost in memory (what reproduces its strides)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    order: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * torch.empty((), dtype=self.dtype).element_size()

    def matches(self, value: Tensor) -> bool:
        return tuple(value.shape[1:]) == self.shape and value.dtype == self.dtype


def leaf_of(value: Tensor, rows: int) -> Leaf:
    """The Leaf of one output tensor of a batch of `rows` samples; Unsupported when it is not batch first, empty, or
    laid out in a way `laid_out` cannot reproduce (overlapping or strided memory)."""
    if value.dim() == 0 or value.shape[0] != rows:
        shape = tuple(value.shape)
        raise Unsupported(f"returns a tensor of shape {shape} for a batch of {rows} samples (expected batch first)")
    if value.numel() == 0:
        raise Unsupported("returns an empty tensor")
    order = tuple(sorted(range(value.dim()), key=lambda d: (-value.stride()[d], d)))
    leaf = Leaf(tuple(value.shape[1:]), value.dtype, value.device, order)
    made = _empty_like_layout(rows, leaf, device=torch.device("meta"))
    if any(n > 1 and a != b for n, a, b in zip(value.shape, value.stride(), made.stride(), strict=True)):
        raise Unsupported(f"returns a tensor with strides {value.stride()} that no dense layout reproduces")
    return leaf


def _empty_like_layout(rows: int, leaf: Leaf, *, device: torch.device) -> Tensor:
    full = (rows, *leaf.shape)
    inverse = sorted(range(len(leaf.order)), key=lambda d: leaf.order[d])
    return torch.empty([full[d] for d in leaf.order], dtype=leaf.dtype, device=device).permute(inverse)


def laid_out(values: Tensor, leaf: Leaf) -> Tensor:
    """`values` [k, *shape] (CPU) on the leaf's device, in the module's own layout; a new tensor every call, so that
    an in-place operation after the module cannot reach the stored rows."""
    out = _empty_like_layout(values.shape[0], leaf, device=leaf.device)
    out.copy_(values)
    return out


class Store:
    """The rows of one module's output leaves: in memory, or in memmap files `<stem>-<leaf>.bin` (raw bytes)."""

    def __init__(self, leaves: Sequence[Leaf], samples: int, *, stem: Path | None) -> None:
        self.leaves, self.samples = list(leaves), samples
        self.paths: list[Path] = []
        self._tensors: list[Tensor] = []
        self._maps: list[np.memmap] = []
        if stem is None:
            self._tensors = [torch.empty((samples, *leaf.shape), dtype=leaf.dtype) for leaf in self.leaves]
        else:
            self.paths = [stem.with_name(f"{stem.name}-{i}.bin") for i in range(len(self.leaves))]
            for path, leaf in zip(self.paths, self.leaves, strict=True):
                self._maps.append(np.memmap(path, dtype=np.uint8, mode="w+", shape=(samples, leaf.row_bytes)))

    @property
    def nbytes(self) -> int:
        return self.samples * sum(leaf.row_bytes for leaf in self.leaves)

    def write(self, start: int, values: Sequence[Tensor]) -> None:
        """Store one batch's leaves as rows start, start + 1, ..."""
        for i, value in enumerate(values):
            value = value.detach().to("cpu")
            stop = start + value.shape[0]
            if self._tensors:
                self._tensors[i][start:stop].copy_(value)
            else:
                raw = value.contiguous().reshape(value.shape[0], -1).view(torch.uint8)
                self._maps[i][start:stop] = raw.numpy()

    def read(self, rows: Tensor) -> list[Tensor]:
        """The leaves of these rows, [k, *shape] each, on the CPU."""
        if self._tensors:
            return [stored.index_select(0, rows) for stored in self._tensors]
        picked = rows.numpy()
        out = []
        for stored, leaf in zip(self._maps, self.leaves, strict=True):
            raw = torch.from_numpy(np.ascontiguousarray(stored[picked]))
            out.append(raw.view(leaf.dtype).reshape(len(picked), *leaf.shape))
        return out

    def close(self, *, remove: bool) -> None:
        """Let go of the rows; with `remove`, delete the files too."""
        for stored in self._maps:
            stored.flush()
        self._tensors, self._maps = [], []  # the last references: the maps close with them
        if remove:
            for path in self.paths:
                path.unlink(missing_ok=True)


def state_hash(module: nn.Module) -> str:
    """A short hash of the module's state_dict (names, dtypes, shapes, bytes): names its cache files, and tells a
    changed frozen module from one whose tensors were only written with the same values (a resume's load)."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)};".encode())
        digest.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def state_version(module: nn.Module) -> int:
    """The sum of the version counters of the module's tensors: it moves whenever one is written in place."""
    return sum(t._version for t in (*module.parameters(), *module.buffers()))


def file_stem(directory: Path, module: str, *, split: str, samples: int, digest: str) -> Path:
    """`<module>-<split>-n<samples>-<hash>`: the file is this run's, and a name that matches says the same module state,
    split and sample count."""
    safe = re.sub(r"[^A-Za-z0-9_.]+", "_", module) or "model"
    return directory / f"{safe}-{re.sub(r'[^A-Za-z0-9_.]+', '_', split)}-n{samples}-{digest}"
