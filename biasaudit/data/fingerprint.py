"""A fingerprint of the samples a scan evaluated, by global index: the audit's `samples` section.

Bootstrap replicates of two audits pair up only when both drew the same Poisson weights for the same
samples, and the weights are keyed by the global sample index. So two audits may be compared replicate
by replicate only if index i was the same sample in both: same count, and the same labels, bias values
and raw inputs at every index. Each fingerprint is an index-keyed sum: every sample's value (its label,
its bias value, its raw input of one modality key) is hashed together with its global index into two
independent 64-bit words, and the words are added modulo 2**64; the 128-bit total and the count are then
hashed with SHA-256 for the 64 hex digits the audit shows. A sum does not depend on the order in which
samples arrive, so a scan sharded over processes (each adding its own batches) merges to exactly the
fingerprint one process computes, and memory stays constant; the index inside every hash keeps the
order: the same samples reshuffled (even within each label) give another sum.
Labels and bias values are hashed as integers, so the same for any batch size. Raw inputs are hashed row by
row: a tensor or array row as its dtype, shape and bytes, a string as UTF-8. An input whose per-row shape
depends on the batch (token ids padded to the longest in the batch) hashes differently under another
`--batch-size`, which can only refuse a pairing, never make a wrong one. An input of another type (e.g. a
list of PIL images) gets no hash (null) and is not compared.
(Audits written before sharding hashed the same values as one SHA-256 stream in scan order; an audit of
either kind pairs only with one of its own kind, because the generator version differs too.)
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, cast
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from biasaudit.errors import DataError
from biasaudit._core.randomness import extend_hash, hash64, stream_id

_SHA256 = re.compile(r"[0-9a-f]{64}")
_LANES = 2  # two independent 64-bit sums: 128 bits
_CHUNK_WORDS = 1 << 20


def _rows_as_words(value: Any) -> tuple[np.ndarray, str] | None:
    """[B, W] uint64 words of each row's bytes (zero-padded to whole words) and a description of the rows' type and
    shape; None for a type we do not hash."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16
            value = value.view(torch.int16)
        value = value.numpy()
    if isinstance(value, np.ndarray) and value.dtype != object and value.ndim >= 1:
        rows = np.ascontiguousarray(value).reshape(len(value), -1).view(np.uint8)
        pad = (-rows.shape[1]) % 8
        if pad:
            rows = np.concatenate([rows, np.zeros((len(rows), pad), dtype=np.uint8)], axis=1)
        return rows.view(np.uint64), f"{value.dtype.str}{value.shape[1:]}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        digests = [hashlib.blake2b(v.encode("utf-8"), digest_size=8).digest() for v in value]
        return np.frombuffer(b"".join(digests), dtype=np.uint64).reshape(len(value), 1), "utf-8"
    return None


_SPREAD = np.uint64(0x9E3779B97F4A7C15)  # odd: a bijection that carries every bit of a word into its top half


@functools.lru_cache(maxsize=8)
def _row_constants(kind: str, width: int) -> tuple[np.ndarray, np.uint64]:
    """One odd 64-bit multiplier per word position of a row of this kind, and the row's starting word."""
    multipliers = hash64(0, "fingerprint-row:" + kind, np.arange(width, dtype=np.int64)) | np.uint64(1)
    return multipliers, np.uint64(hash64(1, "fingerprint-row:" + kind, width))  # scalar keys: one word


def row_hashes(value: Any) -> np.ndarray | None:
    """One 64-bit word per row of a raw input (its type, shape and bytes); None for a type we do not hash.

    A row's word is its kind's starting word plus sum_j g(m_j * f(w_j)) modulo 2**64 over its 64-bit words w_j, with
    a fixed odd multiplier m_j per position, f(w) = h(c * w) and g(x) = x ^ (x >> 29), h(x) = x ^ (x >> 32), c odd.
    Each step is a bijection, so changing one word, or moving it to another position, changes its term; f carries
    every bit, the high ones too (a float's sign and exponent), into the low half before m_j spreads them over the
    word, and g makes the terms non-linear, so that structured changes (two signs flipped, a row negated, both
    floats of a word negated) do not cancel in the sum as they did in a plain sum_j m_j * w_j. The starting word
    separates rows of zeros of different types and shapes. It reads each input byte once, at about 2 GB/s, which
    matters because a scan fingerprints every raw input it reads (an image of 224 x 224 x 3 floats is 600 kB;
    methods.md section 10)."""
    found = _rows_as_words(value)
    if found is None:
        return None
    words, kind = found
    multipliers, start = _row_constants(kind, words.shape[1])
    out = np.full(len(words), start, dtype=np.uint64)
    if not words.shape[1]:
        return out
    step = max(1, _CHUNK_WORDS // words.shape[1])  # rows per chunk: the temporaries stay small for large images
    with np.errstate(over="ignore"):
        for begin in range(0, len(words), step):
            chunk = words[begin : begin + step]
            mixed = chunk * _SPREAD
            mixed ^= mixed >> np.uint64(32)
            mixed *= multipliers
            mixed ^= mixed >> np.uint64(29)
            out[begin : begin + step] += np.sum(mixed, axis=1, dtype=np.uint64)
    return out


class SampleFingerprint:
    """Adds the labels, bias values and raw inputs of a scan batch by batch (by global index; any order); `merge`
    adds another shard's; `to_dict()` is the `samples` section. `input_keys` are the batch keys of the modalities."""

    def __init__(self, *, with_bias: bool, input_keys: Sequence[str] = ()) -> None:
        self.count = 0
        self.labels = np.zeros(_LANES, dtype=np.uint64)
        self.bias = np.zeros(_LANES, dtype=np.uint64) if with_bias else None
        self.inputs: dict[str, np.ndarray | None] = {key: np.zeros(_LANES, dtype=np.uint64) for key in input_keys}

    @staticmethod
    def _keyed(keys: np.ndarray, stream: str, values: np.ndarray) -> np.ndarray:
        """The [lanes] sums of the hashes of (lane, index, stream, value) over a batch; `keys` are the batch's
        [lanes, B] hashes of (lane, index), made once for every stream."""
        with np.errstate(over="ignore"):
            # A sum over axis 1 of a 2-D array is a 1-D array; numpy's stubs also allow a scalar for np.sum.
            return cast(np.ndarray, np.sum(extend_hash(keys, stream_id(stream), values[None, :]), axis=1, dtype=np.uint64))

    def update(
        self, labels: np.ndarray, bias: np.ndarray | None = None, inputs: Mapping[str, Any] | None = None, *, indices: np.ndarray
    ) -> None:
        if (bias is None) != (self.bias is None):
            # A caller bug, not a user error: the scan decides once, from adapter.bias_key, whether bias values exist.
            raise ValueError("bias values must be given on every batch when with_bias=True, and never otherwise")
        keys = hash64(0, "fingerprint", np.arange(_LANES, dtype=np.int64)[:, None], np.asarray(indices, dtype=np.int64)[None, :])
        self.count += len(labels)
        with np.errstate(over="ignore"):
            self.labels += self._keyed(keys, "fingerprint-labels", np.asarray(labels, dtype=np.int64))
            if self.bias is not None:
                self.bias += self._keyed(keys, "fingerprint-bias", np.asarray(bias, dtype=np.int64))
            for key, total in self.inputs.items():
                if total is None:
                    continue
                rows = row_hashes((inputs or {}).get(key))
                if rows is None:
                    self.inputs[key] = None  # one unhashable batch: no hash for this key at all
                else:
                    total += self._keyed(keys, "fingerprint-input:" + key, rows.view(np.int64))

    def merge(self, other: SampleFingerprint) -> None:
        """Add another shard's samples (disjoint global indices)."""
        self.count += other.count
        with np.errstate(over="ignore"):
            self.labels += other.labels
            if self.bias is not None and other.bias is not None:
                self.bias += other.bias
            for key in self.inputs:
                theirs = other.inputs.get(key)
                if self.inputs[key] is None or theirs is None:
                    self.inputs[key] = None
                else:
                    self.inputs[key] = self.inputs[key] + theirs

    def _hex(self, what: str, total: np.ndarray) -> str:
        return hashlib.sha256(f"{what}:{self.count}:".encode() + np.ascontiguousarray(total, dtype="<u8").tobytes()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "labels_sha256": self._hex("labels", self.labels),
            "bias_sha256": self._hex("bias", self.bias) if self.bias is not None else None,
            "inputs_sha256": {
                key: self._hex("input:" + key, total) if total is not None else None for key, total in self.inputs.items()
            },
        }


def check_fingerprint(section: Any) -> None:
    """Raise DataError when an audit's `samples` section is not one a scan writes."""
    if not isinstance(section, Mapping):
        raise DataError(f"samples is a {type(section).__name__}; expected an object with count, labels_sha256 and bias_sha256.")
    count = section.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise DataError(f"samples.count is {count!r}; expected a non-negative integer.")
    for key in ("labels_sha256", "bias_sha256"):
        value = section.get(key)
        if not (isinstance(value, str) and _SHA256.fullmatch(value)) and not (key == "bias_sha256" and value is None):
            raise DataError(
                f"samples.{key} is {value!r}; expected 64 lowercase hex digits{' or null' if key == 'bias_sha256' else ''}."
            )
    inputs = section.get("inputs_sha256", {})  # absent in audits written before inputs were hashed
    if not isinstance(inputs, Mapping) or not all(
        isinstance(k, str) and (v is None or (isinstance(v, str) and _SHA256.fullmatch(v))) for k, v in inputs.items()
    ):
        raise DataError(f"samples.inputs_sha256 is {inputs!r}; expected an object of batch key: 64 lowercase hex digits or null.")


def fingerprint_difference(before: Mapping[str, Any], after: Mapping[str, Any]) -> str | None:
    """Why two `samples` sections do not show the same samples in the same order; None when they do."""
    if before["count"] != after["count"]:
        return f"different samples ({before['count']} vs {after['count']} samples)"
    if before["labels_sha256"] != after["labels_sha256"]:
        return "different samples (fingerprints differ: the labels are not the same in scan order)"
    if None not in (before.get("bias_sha256"), after.get("bias_sha256")) and before["bias_sha256"] != after["bias_sha256"]:
        return "different samples (fingerprints differ: the bias values are not the same in scan order)"
    inputs_before, inputs_after = before.get("inputs_sha256") or {}, after.get("inputs_sha256") or {}
    for key in sorted(inputs_before.keys() & inputs_after.keys()):
        if None not in (inputs_before[key], inputs_after[key]) and inputs_before[key] != inputs_after[key]:
            return (
                f"different samples (fingerprints differ: the inputs under batch key {key!r} are not the same in scan order, "
                "or were batched differently)"
            )
    return None
