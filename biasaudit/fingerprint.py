"""A fingerprint of the samples a scan evaluated, in scan order: the audit's `samples` section.

Bootstrap replicates of two audits pair up only when both drew the same Poisson weights for the same
samples, and the weights are keyed by the global sample index. So two audits may be compared replicate
by replicate only if index i was the same sample in both: same count and the same labels (and bias
values, where both audits recorded them) in the same order. Hashing the labels is cheap and catches a
different split, a reshuffled or resized data set and a changed label file; it cannot see inputs that
changed under unchanged labels, which is why the comparison also requires the same split name.
Values are hashed as little-endian int64 bytes, so the hash does not depend on the batch size.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping

import numpy as np

from biasaudit.errors import DataError

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _int64_bytes(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype="<i8").tobytes()


class SampleFingerprint:
    """Streams the labels (and bias values) of a scan batch by batch; `to_dict()` is the `samples` section."""

    def __init__(self, *, with_bias: bool) -> None:
        self.count = 0
        self._labels = hashlib.sha256()
        self._bias = hashlib.sha256() if with_bias else None

    def update(self, labels: np.ndarray, bias: np.ndarray | None = None) -> None:
        if (bias is None) != (self._bias is None):
            # A caller bug, not a user error: the scan decides once, from adapter.bias_key, whether bias values exist.
            raise ValueError("bias values must be given on every batch when with_bias=True, and never otherwise")
        self.count += len(labels)
        self._labels.update(_int64_bytes(labels))
        if self._bias is not None:
            self._bias.update(_int64_bytes(bias))

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "labels_sha256": self._labels.hexdigest(),
                "bias_sha256": self._bias.hexdigest() if self._bias is not None else None}


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


def fingerprint_difference(before: Mapping[str, Any], after: Mapping[str, Any]) -> str | None:
    """Why two `samples` sections do not show the same samples in the same order; None when they do."""
    if before["count"] != after["count"]:
        return f"different samples ({before['count']} vs {after['count']} samples)"
    if before["labels_sha256"] != after["labels_sha256"]:
        return "different samples (fingerprints differ: the labels are not the same in scan order)"
    if None not in (before.get("bias_sha256"), after.get("bias_sha256")) and before["bias_sha256"] != after["bias_sha256"]:
        return "different samples (fingerprints differ: the bias values are not the same in scan order)"
    return None
