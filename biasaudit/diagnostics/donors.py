"""A bounded, seeded pool of donor samples, and batches with one modality's raw input swapped for a donor's.

The carrier test and the interaction share (methods.md section 9) replace one modality of a sample by
that of another sample. Donors are kept per (label, bias value) group: the `capacity` samples of each
group with the smallest hash of (seed, index). That set depends only on which samples the split holds,
never on batch size, order or sharding (bottom-k sets merge exactly), and every group that has samples
has donors, so a rare bias value is never missing from the pool, up to LABEL_CAPACITY_FACTOR x capacity
donors per label. Memory: at most classes x 64 raw samples.

The pool keeps as many donors of a rare group as of a common one, so a donor drawn uniformly from it would
follow the groups of the pool, not of the split: on a split where one bias value is ten times as frequent
as another within a label, a bias swap would draw each half the time, and the carrier test's rates would
describe a balanced split that was never audited. So every entry weighs n_g / kept_g (the samples of its
group in the split over the entries the pool kept of it), and a donor is drawn among the eligible entries
in proportion to those weights: a donor's group is drawn in proportion to the split's group sizes. The
draw is an exponential race (Efraimidis & Spirakis 2006): entry j runs -log(1 - u_ij) / w_j with u_ij a
uniform from hash64(seed, stream, i, j), and the smallest wins. It is a pure function of the seed, the two
indices and the group counts, and the counts are of the whole split, which every process reads ahead of
the pass, so the draw does not depend on batching or sharding. Where the weights are equal (a balanced
split) the race picks the entry with the smallest hash, as the unweighted rule did. For the interaction's
split-half correction the pool also has two halves (a group's entries alternate between them), each
weighted to the split in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from biasaudit.data.modality import Modality
from biasaudit.errors import DataError
from biasaudit.data.impairments import other_keys, padding_side, widen_tokens
from biasaudit._core.randomness import hash64

DEFAULT_CAPACITY = 4
# At most this many times `capacity` donors per label, whatever the number of bias values: a bias attribute
# with thousands of values would otherwise keep most of the split. Among a label's per-group donors the ones
# with the smallest hashes stay, so the set still depends only on the samples, never on their order.
LABEL_CAPACITY_FACTOR = 16
# How donors are drawn, in the words the audit records beside the rates they shape (carrier, interaction).
DONOR_DRAW = (
    "drawn in proportion to the split's (label, bias value) groups: each pool entry weighs its group's samples "
    "over the entries kept of the group"
)


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
    _counts: dict[tuple[int, int], int] = field(default_factory=dict)  # samples per (label, bias value) in the split

    def add(self, batch: Mapping[str, Any], indices: np.ndarray, labels: np.ndarray, bias: np.ndarray) -> None:
        keys = hash64(self.seed, "donor-pool", indices)
        for i in range(len(indices)):
            group = (int(labels[i]), int(bias[i]))
            entries = self._groups.setdefault(group, [])
            self._counts[group] = self._counts.get(group, 0) + 1
            self._label_groups.setdefault(group[0], set()).add(group)
            key = (int(keys[i]), int(indices[i]))
            if len(entries) >= self.capacity and key >= entries[-1][:2]:
                continue
            rows = {}
            for m in self.modalities:
                rows[m.batch_key] = _row(batch[m.batch_key], i)
                if m.kind == "tokens":
                    rows[m.token_mask_key] = _row(batch[m.token_mask_key], i)
            entries.append((*key, rows))
            entries.sort(key=lambda e: e[:2])
            del entries[self.capacity :]
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
        # How many samples of the split each entry stands for: its group's count over the entries kept of it.
        self.weight = np.array([self._counts[g] / len(self._groups[g]) for g, _ in ordered], dtype=np.float64)
        # Two halves of the pool for the interaction's split-half correction (diagnostics/interaction.py): a group's
        # entries alternate between them in key order, and a group's only entry serves both. Within a half an entry
        # stands for its group's count over the group's entries in that half, so each half is in proportion too.
        self.in_half = np.zeros((2, len(ordered)), dtype=bool)
        self.half_weight = np.ones((2, len(ordered)), dtype=np.float64)  # 1 where not in the half: never eligible there
        start = 0
        for g in sorted(self._groups):
            kept = len(self._groups[g])
            for half in (0, 1):
                members = np.arange(start, start + kept)[(np.arange(kept) % 2 == half) | (kept == 1)]
                self.in_half[half, members] = True
                self.half_weight[half, members] = self._counts[g] / max(len(members), 1)
            start += kept
        self._frozen = True

    def __len__(self) -> int:
        return len(self.rows) if self._frozen else sum(len(e) for e in self._groups.values())

    def choose(self, indices: np.ndarray, eligible: np.ndarray, *, stream: str, weight: np.ndarray | None = None) -> np.ndarray:
        """Per sample, the position of its donor among the eligible pool entries ([B, P] mask); -1 when none. Entry j
        is drawn with probability weight_j / (sum of the eligible weights), weight the pool's unless given: see the
        module docstring."""
        out = np.full(len(indices), -1, dtype=np.int64)
        if not len(self.rows) or not len(indices):
            return out
        weight = self.weight if weight is None else weight
        if 4 * np.count_nonzero(eligible) >= eligible.size:  # most pairs eligible (the interaction's): the dense race
            race = np.where(eligible, self._race(indices[:, None], self.index[None, :], weight[None, :], stream), np.inf)
            return np.where(eligible.any(axis=1), np.argmin(race, axis=1), -1)
        # Few eligible pairs (a swap's are a label's share of the pool): only those are hashed, row by row in column
        # order. Each pair's race is the same number either way, so the two paths choose alike.
        rows, columns = np.nonzero(eligible)
        if not len(rows):
            return out
        race = self._race(indices[rows], self.index[columns], weight[columns], stream)
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        fastest = race == np.repeat(np.minimum.reduceat(race, starts), np.diff(np.r_[starts, len(rows)]))
        won = np.flatnonzero(fastest)
        first = np.r_[True, rows[won][1:] != rows[won][:-1]]  # a tie goes to the first column, as argmin's would
        out[rows[won[first]]] = columns[won[first]]
        return out

    def _race(self, sample: np.ndarray, entry: np.ndarray, weight: np.ndarray, stream: str) -> np.ndarray:
        """-log(1 - u) / w, broadcast: u a 53-bit uniform in (0, 1) increasing in the hash of (seed, stream, sample,
        entry), so that equal weights keep the smallest-hash rule."""
        uniform = ((hash64(self.seed, stream, sample, entry) >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
        return -np.log1p(-uniform) / weight

    def bias_donors(self, indices: np.ndarray, labels: np.ndarray, bias: np.ndarray, favouring: np.ndarray) -> np.ndarray:
        """Same label, another bias value that favours some class in train (favouring[k]: F(k) is not empty), so that
        following the donor's bias means something."""
        has_prior = np.zeros(len(self.bias), dtype=bool)
        known = self.bias < len(favouring)
        has_prior[known] = favouring[self.bias[known]]
        eligible = (self.label[None, :] == labels[:, None]) & (self.bias[None, :] != bias[:, None]) & has_prior[None, :]
        return self.choose(indices, eligible, stream="donor-bias-swap")

    def null_donors(self, indices: np.ndarray, labels: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """The same label and the same bias value, another sample: a swap that changes content but not bias."""
        eligible = (
            (self.label[None, :] == labels[:, None])
            & (self.bias[None, :] == bias[:, None])
            & (self.index[None, :] != indices[:, None])
        )
        return self.choose(indices, eligible, stream="donor-null-swap")

    def content_donors(self, indices: np.ndarray, labels: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """Another label, the same bias value."""
        eligible = (self.label[None, :] != labels[:, None]) & (self.bias[None, :] == bias[:, None])
        return self.choose(indices, eligible, stream="donor-content-swap")

    def any_donors(self, indices: np.ndarray, *, draw: int, half: int | None = None) -> np.ndarray:
        """The draw-th independent donor of each sample among the pool entries other than itself (interaction): among
        one half of the pool when `half` is 0 or 1, or the whole pool for a sample that half has no other entry for."""
        eligible, stream = self.index[None, :] != indices[:, None], f"donor-any-{draw}"
        if half is None:
            return self.choose(indices, eligible, stream=stream)
        donors = self.choose(indices, eligible & self.in_half[half][None, :], stream=stream, weight=self.half_weight[half])
        alone = np.flatnonzero(donors < 0)
        if len(alone):
            donors[alone] = self.choose(indices[alone], eligible[alone], stream=stream)
        return donors


def swap_modality(batch: Mapping[str, Any], modality: Modality, donors: np.ndarray, pool: DonorPool) -> dict[str, Any]:
    """A shallow copy of the batch whose rows with a donor (donors >= 0) carry the donor's raw input of this
    modality; every other key and row is shared."""
    out = dict(batch)
    rows = np.flatnonzero(donors >= 0)
    if modality.kind == "tokens":
        _swap_tokens(out, rows, [pool.rows[d] for d in donors[rows]], modality, others=other_keys(pool.modalities, modality))
        return out
    values = batch[modality.batch_key]
    if isinstance(values, torch.Tensor):
        swapped = values.clone()
        for r, d in zip(rows, donors[rows], strict=True):
            donor = pool.rows[d][modality.batch_key]
            if donor.shape != swapped.shape[1:]:
                raise DataError(
                    f"Modality {modality.name!r} has inputs of shape {tuple(donor.shape)} and {tuple(swapped.shape[1:])} "
                    "in one split; the carrier test swaps inputs between samples and needs one shape per sample."
                )
            swapped[r] = donor.to(device=swapped.device, dtype=swapped.dtype)
        out[modality.batch_key] = swapped
    else:
        swapped_list = list(values)
        for r, d in zip(rows, donors[rows], strict=True):
            swapped_list[r] = pool.rows[d][modality.batch_key]
        out[modality.batch_key] = swapped_list
    return out


def _swap_tokens(
    batch: dict[str, Any], rows: np.ndarray, donors: list[dict[str, Any]], modality: Modality, *, others: Sequence[str]
) -> None:
    """Each donor row keeps only its tokens (its mask's span) and is placed flush to the batch's padding side. When a
    donor is longer than the batch is wide, the batch is widened: ids with pad_id, the mask and every other
    [B, L] tensor of the batch (e.g. token_type_ids) with 0, on the padding side."""
    ids, mask = batch[modality.batch_key], batch[modality.token_mask_key]
    side = padding_side(mask, modality)
    spans = [d[modality.batch_key][d[modality.token_mask_key] != 0] for d in donors]
    width = max([ids.shape[1]] + [len(span) for span in spans])
    batch.update(widen_tokens(batch, modality, width, side=side, others=others))
    new_ids, new_mask = batch[modality.batch_key].clone(), batch[modality.token_mask_key].clone()
    for r, span in zip(rows, spans, strict=True):
        new_ids[r] = modality.token_pad_id
        new_mask[r] = 0
        place = slice(width - len(span), width) if side == "left" else slice(0, len(span))
        new_ids[r, place] = span.to(device=new_ids.device, dtype=new_ids.dtype)
        new_mask[r, place] = 1
    batch[modality.batch_key], batch[modality.token_mask_key] = new_ids, new_mask
