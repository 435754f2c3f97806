"""A fingerprint of the samples a scan evaluated, in scan order: the audit's `samples` section.

Bootstrap replicates of two audits pair up only when both drew the same Poisson weights for the same
samples, and the weights are keyed by the global sample index. So two audits may be compared replicate
by replicate only if index i was the same sample in both: same count, and the same labels, bias values
and raw inputs in the same order. Each is a streaming SHA-256 over the samples in scan order, so a
different split, a reshuffled, resized or edited data set (even one reshuffled within each label) shows.
Labels and bias values are hashed as little-endian int64; raw inputs per modality key: tensors and
arrays as their bytes, strings as UTF-8 with a length prefix. Labels and bias values hash the same for
any batch size; an input whose per-batch shape depends on the batch (token ids padded to the longest
in the batch) hashes differently under another `--batch-size`, which can only refuse a pairing, never
make a wrong one. An input of another type (e.g. a list of PIL images) gets no hash (null) and is not
compared.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from biasaudit.errors import DataError

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _int64_bytes(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype="<i8").tobytes()


def _input_bytes(value: Any) -> bytes | None:
    """The bytes of one batch's raw input, in sample order; None for a type we do not hash."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16
            value = value.view(torch.int16)
        return np.ascontiguousarray(value.numpy()).tobytes()
    if isinstance(value, np.ndarray) and value.dtype != object:
        return np.ascontiguousarray(value).tobytes()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return b"".join(len(e).to_bytes(8, "little") + e for e in (v.encode("utf-8") for v in value))
    return None


class SampleFingerprint:
    """Streams the labels, bias values and raw inputs of a scan batch by batch; `to_dict()` is the
    `samples` section. `input_keys` are the batch keys of the modalities."""

    def __init__(self, *, with_bias: bool, input_keys: Sequence[str] = ()) -> None:
        self.count = 0
        self._labels = hashlib.sha256()
        self._bias = hashlib.sha256() if with_bias else None
        self._inputs: dict[str, Any] = {key: hashlib.sha256() for key in input_keys}

    def update(self, labels: np.ndarray, bias: np.ndarray | None = None, inputs: Mapping[str, Any] | None = None) -> None:
        if (bias is None) != (self._bias is None):
            # A caller bug, not a user error: the scan decides once, from adapter.bias_key, whether bias values exist.
            raise ValueError("bias values must be given on every batch when with_bias=True, and never otherwise")
        self.count += len(labels)
        self._labels.update(_int64_bytes(labels))
        if self._bias is not None:
            self._bias.update(_int64_bytes(bias))
        for key, hasher in self._inputs.items():
            if hasher is None:
                continue
            data = _input_bytes((inputs or {}).get(key))
            if data is None:
                self._inputs[key] = None  # one unhashable batch: no hash for this key at all
            else:
                hasher.update(data)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "labels_sha256": self._labels.hexdigest(),
                "bias_sha256": self._bias.hexdigest() if self._bias is not None else None,
                "inputs_sha256": {key: h.hexdigest() if h is not None else None for key, h in self._inputs.items()}}


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
            raise DataError(f"samples.{key} is {value!r}; expected 64 lowercase hex digits{' or null' if key == 'bias_sha256' else ''}.")
    inputs = section.get("inputs_sha256", {})  # absent in audits written before inputs were hashed
    if not isinstance(inputs, Mapping) or not all(isinstance(k, str) and (v is None or (isinstance(v, str) and _SHA256.fullmatch(v)))
                                                  for k, v in inputs.items()):
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
            return (f"different samples (fingerprints differ: the inputs under batch key {key!r} are not the same in scan order, "
                    "or were batched differently)")
    return None
