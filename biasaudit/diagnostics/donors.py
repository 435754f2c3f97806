"""A bounded, seeded pool of donor samples, and batches with one modality's raw input swapped for a donor's.

The carrier test and the interaction share (methods.md section 9) replace one modality of a sample by
that of another sample. Donors are kept per (label, bias value) group: the `capacity` samples of each
group with the smallest hash of (seed, index). That set depends only on which samples the split holds,
never on batch size, order or sharding (bottom-k sets merge exactly), and every group that has samples
has donors, so a rare bias value is never missing from the pool, up to LABEL_CAPACITY_FACTOR x capacity
donors per label. Memory: at most classes x 64 raw samples.
A donor for sample i is the eligible pool entry j with the smallest hash of (seed, i, j): a pure function
of the seed and the two indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from biasaudit.modality import Modality
from biasaudit.errors import DataError
from biasaudit.impairments import other_keys, padding_side, widen_tokens
from biasaudit.randomness import hash64

DEFAULT_CAPACITY = 4
# At most this many times `capacity` donors per label, whatever the number of bias values: a bias attribute
# with thousands of values would otherwise keep most of the split. Among a label's per-group donors the ones
# with the smallest hashes stay, so the set still depends only on the samples, never on their order.
LABEL_CAPACITY_FACTOR = 16


def _row(values: Any, i: int) -> Any:
    if isinstance(values, torch.Tensor):
        return values[i].detach().to("cpu", copy=True)
    return values[i]


@dataclass
class DonorPool:
    modalities: Sequence[Modality]
    capacity: int = DEFAULT_CAPACITY
    seed: int = 0
    _groups: dict[tuple[int, int], list[tuple[int, int, dict[str, Any]]]] = field(default_factory=dict)
    _frozen: bool = False
    _label_groups: dict[int, set[tuple[int, int]]] = field(default_factory=dict)

    def add(self, batch: Mapping[str, Any], indices: np.ndarray, labels: np.ndarray, bias: np.ndarray) -> None:
        keys = hash64(self.seed, "donor-pool", indices)
        for i in range(len(indices)):
            group = (int(labels[i]), int(bias[i]))
            entries = self._groups.setdefault(group, [])
            self._label_groups.setdefault(group[0], set()).add(group)
            key = (int(keys[i]), int(indices[i]))
            if len(entries) >= self.capacity and key >= entries[-1][:2]:
                continue
            rows = {}
            for m in self.modalities:
                rows[m.key] = _row(batch[m.key], i)
                if m.kind == "tokens":
                    rows[m.mask_key] = _row(batch[m.mask_key], i)
            entries.append((*key, rows))
            entries.sort(key=lambda e: e[:2])
            del entries[self.capacity:]
            self._cap_label(int(labels[i]))

    def _cap_label(self, label: int) -> None:
        groups = self._label_groups[label]
        while sum(len(self._groups[g]) for g in groups) > self.capacity * LABEL_CAPACITY_FACTOR:
            largest = max((g for g in groups if self._groups[g]), key=lambda g: self._groups[g][-1][:2])
            self._groups[largest].pop()

    def freeze(self) -> None:
        """Flatten the pool into arrays, ordered by (label, bias, key): the order does not depend on batching."""
        ordered = [(g, e) for g in sorted(self._groups) for e in self._groups[g]]
        self.label = np.array([g[0] for g, _ in ordered], dtype=np.int64)
        self.bias = np.array([g[1] for g, _ in ordered], dtype=np.int64)
        self.index = np.array([e[1] for _, e in ordered], dtype=np.int64)
        self.rows = [e[2] for _, e in ordered]
        self._frozen = True

    def __len__(self) -> int:
        return len(self.rows) if self._frozen else sum(len(e) for e in self._groups.values())

    def choose(self, indices: np.ndarray, eligible: np.ndarray, *, stream: str) -> np.ndarray:
        """Per sample, the position of its donor among the eligible pool entries ([B, P] mask); -1 when none."""
        if not len(self.rows) or not len(indices):
            return np.full(len(indices), -1, dtype=np.int64)
        score = hash64(self.seed, stream, indices[:, None], self.index[None, :])
        score = np.where(eligible, score, np.iinfo(np.uint64).max)
        best = np.argmin(score, axis=1)
        return np.where(eligible.any(axis=1), best, -1)

    def bias_donors(self, indices: np.ndarray, labels: np.ndarray, bias: np.ndarray, preferred: np.ndarray) -> np.ndarray:
        """Same label, another bias value that has a training prior (so c(k_donor) is defined)."""
        has_prior = np.zeros(len(self.bias), dtype=bool)
        known = self.bias < len(preferred)
        has_prior[known] = preferred[self.bias[known]] >= 0
        eligible = (self.label[None, :] == labels[:, None]) & (self.bias[None, :] != bias[:, None]) & has_prior[None, :]
        return self.choose(indices, eligible, stream="donor-bias-swap")

    def null_donors(self, indices: np.ndarray, labels: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """The same label and the same bias value, another sample: a swap that changes content but not bias."""
        eligible = (self.label[None, :] == labels[:, None]) & (self.bias[None, :] == bias[:, None]) & (self.index[None, :] != indices[:, None])
        return self.choose(indices, eligible, stream="donor-null-swap")

    def content_donors(self, indices: np.ndarray, labels: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """Another label, the same bias value."""
        eligible = (self.label[None, :] != labels[:, None]) & (self.bias[None, :] == bias[:, None])
        return self.choose(indices, eligible, stream="donor-content-swap")

    def any_donors(self, indices: np.ndarray, *, draw: int) -> np.ndarray:
        """The draw-th independent donor of each sample among all pool entries other than itself (interaction)."""
        eligible = self.index[None, :] != indices[:, None]
        return self.choose(indices, eligible, stream=f"donor-any-{draw}")


def swap_modality(batch: Mapping[str, Any], modality: Modality, donors: np.ndarray, pool: DonorPool) -> dict[str, Any]:
    """A shallow copy of the batch whose rows with a donor (donors >= 0) carry the donor's raw input of this
    modality; every other key and row is shared."""
    out = dict(batch)
    rows = np.flatnonzero(donors >= 0)
    if modality.kind == "tokens":
        _swap_tokens(out, rows, [pool.rows[d] for d in donors[rows]], modality, others=other_keys(pool.modalities, modality))
        return out
    values = batch[modality.key]
    if isinstance(values, torch.Tensor):
        swapped = values.clone()
        for r, d in zip(rows, donors[rows]):
            donor = pool.rows[d][modality.key]
            if donor.shape != swapped.shape[1:]:
                raise DataError(f"Modality {modality.name!r} has inputs of shape {tuple(donor.shape)} and {tuple(swapped.shape[1:])} in one split; "
                                "the carrier test swaps inputs between samples and needs one shape per sample.")
            swapped[r] = donor.to(device=swapped.device, dtype=swapped.dtype)
        out[modality.key] = swapped
    else:
        swapped_list = list(values)
        for r, d in zip(rows, donors[rows]):
            swapped_list[r] = pool.rows[d][modality.key]
        out[modality.key] = swapped_list
    return out


def _swap_tokens(batch: dict[str, Any], rows: np.ndarray, donors: list[dict[str, Any]], modality: Modality, *,
                 others: Sequence[str]) -> None:
    """Each donor row keeps only its tokens (its mask's span) and is placed flush to the batch's padding side. When a
    donor is longer than the batch is wide, the batch is widened: ids with pad_id, the mask and every other
    [B, L] tensor of the batch (e.g. token_type_ids) with 0, on the padding side."""
    ids, mask = batch[modality.key], batch[modality.mask_key]
    side = padding_side(mask, modality)
    spans = [d[modality.key][d[modality.mask_key] != 0] for d in donors]
    width = max([ids.shape[1]] + [len(span) for span in spans])
    batch.update(widen_tokens(batch, modality, width, side=side, others=others))
    new_ids, new_mask = batch[modality.key].clone(), batch[modality.mask_key].clone()
    for r, span in zip(rows, spans):
        new_ids[r] = modality.pad_id
        new_mask[r] = 0
        place = slice(width - len(span), width) if side == "left" else slice(0, len(span))
        new_ids[r, place] = span.to(device=new_ids.device, dtype=new_ids.dtype)
        new_mask[r, place] = 1
    batch[modality.key], batch[modality.mask_key] = new_ids, new_mask
