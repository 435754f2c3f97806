"""Test-time impairments of raw inputs, in one explicit registry keyed by modality kind.

Every impairment is a pure function of (raw values, severity, per-sample random streams): it never
edits its input, keeps shape and dtype, is the identity at severity 0, and gives the same result for
a sample whatever batch it arrives in, because each sample gets its own stream derived from
(seed, condition tag, sample index). Severity is always in [0, 1].

The muting impairments (`zero`, `mean`, `empty`) take their severity as the *fraction of samples*
muted, chosen by one per-sample uniform draw shared by every condition and checkpoint under a seed;
so `missing_ratio:r` is simply the modality's muting impairment at severity r, the subsets for
increasing r are nested, and severity 1 (the default) mutes everything.

Every draw is counter-based (biasaudit/_core/randomness.py, methods.md section 10): computed for the whole batch at
once from (seed, condition tag, sample index, position), with no generator object per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from biasaudit.data.modality import Modality
from biasaudit.errors import ConditionError
from biasaudit._core.randomness import SampleDraws, uniform

# The dataset indices of a batch's samples, one per row: a list or a 1-D integer array.
SampleIndices = Sequence[int] | np.ndarray
# values, modality, severity, muted-or-affected flags, the batch's per-sample draws -> new values
ImpairFn = Callable[[Any, Modality, float, np.ndarray, SampleDraws], Any]


@dataclass(frozen=True)
class Impairment:
    name: str
    apply: ImpairFn
    default_severity: float
    mutes: bool  # True for impairments that remove the modality (zero, mean, empty)
    description: str


def muted_subset(indices: SampleIndices, *, seed: int, fraction: float) -> np.ndarray:
    """Which samples a muting impairment of this fraction touches: u_i < fraction, u_i fixed per sample."""
    if fraction >= 1.0:
        return np.ones(len(indices), dtype=bool)
    return muted_subset_draws(indices, seed=seed) < fraction


def muted_subset_draws(indices: SampleIndices, *, seed: int) -> np.ndarray:
    """The per-sample uniforms behind every muted subset: sample i is muted at fraction r when its draw is below r."""
    return uniform(seed, "missing-subset", np.asarray(indices, dtype=np.int64))


# ---- image -------------------------------------------------------------------------------------
def _image_zero(
    values: torch.Tensor, modality: Modality, severity: float, chosen: np.ndarray, draws: SampleDraws
) -> torch.Tensor:
    # "Missing image" is a black image in *raw* pixel space (0), before the adapter normalises.
    out = values.clone()
    out[torch.as_tensor(chosen, device=values.device)] = 0
    return out


def _image_mean(
    values: torch.Tensor, modality: Modality, severity: float, chosen: np.ndarray, draws: SampleDraws
) -> torch.Tensor:
    # The mid-grey of the valid range: after a mean/std normalisation this is close to all zeros.
    low, high = modality.value_range
    out = values.clone()
    out[torch.as_tensor(chosen, device=values.device)] = (low + high) / 2
    return out


def _salt_pepper(
    values: torch.Tensor, modality: Modality, severity: float, chosen: np.ndarray, draws: SampleDraws
) -> torch.Tensor:
    low, high = modality.value_range
    out = values.clone()
    # One decision per pixel *location*, shared by all channels: the spatial shape is the last two dims.
    spatial = tuple(values.shape[-2:])
    # One uniform per location decides both: below severity it is corrupted, and then its lower half is pepper.
    u = torch.as_tensor(draws.uniform(int(np.prod(spatial))), device=values.device)
    u = u.reshape(len(draws), *([1] * (values.ndim - 3)), *spatial).expand(values.shape)
    corrupt = u < severity
    out[corrupt & (u >= severity / 2)] = high
    out[corrupt & (u < severity / 2)] = low
    return out


# ---- generic tensors ---------------------------------------------------------------------------
def _tensor_zero(
    values: torch.Tensor, modality: Modality, severity: float, chosen: np.ndarray, draws: SampleDraws
) -> torch.Tensor:
    out = values.clone()
    out[torch.as_tensor(chosen, device=values.device)] = 0
    return out


def _gaussian(values: torch.Tensor, modality: Modality, severity: float, chosen: np.ndarray, draws: SampleDraws) -> torch.Tensor:
    if values.shape[0] == 0:
        return values.clone()
    flat = values.reshape(values.shape[0], -1).double()
    std = flat.std(dim=1, unbiased=False, keepdim=True) if flat.shape[1] > 1 else torch.zeros_like(flat[:, :1])
    noise = torch.from_numpy(draws.normal(flat.shape[1])).to(values.device)
    noisy = (flat + noise * (severity * std)).reshape(values.shape)
    if modality.kind == "image":
        noisy = noisy.clamp(*modality.value_range)  # stay in the raw pixel space the adapter expects
    if not values.dtype.is_floating_point:
        noisy = noisy.round().clamp(torch.iinfo(values.dtype).min, torch.iinfo(values.dtype).max)
    return noisy.to(values.dtype)


# ---- raw text ----------------------------------------------------------------------------------
def _text_empty(values: Sequence[str], modality: Modality, severity: float, chosen: np.ndarray, draws: SampleDraws) -> list[str]:
    return ["" if c else text for text, c in zip(values, chosen, strict=True)]


def _token_delete_text(
    values: Sequence[str], modality: Modality, severity: float, chosen: np.ndarray, draws: SampleDraws
) -> list[str]:
    words = [text.split() for text in values]
    u = draws.uniform(max((len(w) for w in words), default=0))  # the k-th word of a text gets its k-th draw
    return [" ".join(w for w, keep in zip(row, u[i, : len(row)] >= severity, strict=True) if keep) for i, row in enumerate(words)]


# ---- token ids ---------------------------------------------------------------------------------
def padding_side(mask: torch.Tensor, modality: Modality) -> str:
    """The modality's declared side, else what the batch shows: left when some row starts with padding while
    every row ends with a token; right otherwise (also for a batch without padding, where nothing shows it:
    declare Modality(padding_side="left") for a left-padding tokenizer)."""
    if modality.padding_side is not None:
        return modality.padding_side
    if mask.ndim == 2 and mask.shape[1] and bool((mask[:, 0] == 0).any()) and bool((mask[:, -1] != 0).all()):
        return "left"
    return "right"


def widen_tokens(
    batch: Mapping[str, Any], modality: Modality, width: int, *, side: str, others: Sequence[str] = ()
) -> dict[str, Any]:
    """The batch with the modality's ids padded to `width` columns on `side`: the ids with pad_id, the mask and every
    other integer [B, L] tensor of the same shape (e.g. token_type_ids) with 0, except the keys in `others` (the
    other modalities'). A batch already that wide is returned as is."""
    ids = batch[modality.batch_key]
    extra = width - ids.shape[1]
    out = dict(batch)
    if extra <= 0:
        return out
    for key, value in batch.items():
        # The modality's ids and mask, and [B, L] companions such as token_type_ids; never another modality's tensors.
        if key in others or not (isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape == ids.shape):
            continue
        if key in (modality.key, modality.mask_key) or value.dtype in (torch.long, torch.int, torch.bool):
            fill = modality.token_pad_id if key == modality.key else 0
            pad = torch.full((value.shape[0], extra), fill, dtype=value.dtype, device=value.device)
            out[key] = torch.cat([pad, value] if side == "left" else [value, pad], dim=1)
    return out


def other_keys(modalities: Sequence[Modality], modality: Modality) -> tuple[str, ...]:
    """The batch keys of every modality but `modality` (their inputs and masks): what widening one must not touch."""
    return tuple(k for m in modalities if m.name != modality.name for k in (m.key, m.mask_key) if k is not None)


def _compact(
    ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, pad_id: int, side: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the marked positions in order, flush to the side the batch does not pad; pad the rest with the mask off
    (a left-padded row stays flush right, as its tokenizer would have made it)."""
    new_ids = torch.full_like(ids, pad_id)
    new_mask = torch.zeros_like(mask)
    kept = ids[keep]
    place = slice(ids.numel() - kept.numel(), ids.numel()) if side == "left" else slice(0, kept.numel())
    new_ids[place] = kept
    new_mask[place] = 1
    return new_ids, new_mask


def _token_ids_empty(values, modality: Modality, severity: float, chosen: np.ndarray, draws: SampleDraws):
    ids, mask = values
    new_ids, new_mask = ids.clone(), mask.clone()
    special = torch.tensor(list(modality.special_ids), dtype=ids.dtype, device=ids.device)
    side = padding_side(mask, modality)
    for i in np.flatnonzero(chosen):
        # What a tokenizer gives for "": only its special tokens survive.
        keep = (mask[i] != 0) & torch.isin(ids[i], special)
        new_ids[i], new_mask[i] = _compact(ids[i], mask[i], keep, modality.token_pad_id, side)
    return new_ids, new_mask


def _token_ids_delete(values, modality: Modality, severity: float, chosen: np.ndarray, draws: SampleDraws):
    ids, mask = values
    new_ids, new_mask = ids.clone(), mask.clone()
    special = torch.tensor(list(modality.special_ids), dtype=ids.dtype, device=ids.device)
    side = padding_side(mask, modality)
    u = torch.as_tensor(draws.uniform(ids.shape[1]) < severity, device=ids.device)
    for i in range(len(draws)):
        present = mask[i] != 0
        is_special = torch.isin(ids[i], special)
        # One draw per real token, in order: the k-th token of a text gets the k-th draw wherever padding put it,
        # so left- and right-padded ids and any batch width delete the same tokens.
        drop = torch.zeros_like(present)
        drop[present] = u[i, : int(present.sum())]
        drop &= ~is_special
        new_ids[i], new_mask[i] = _compact(ids[i], mask[i], present & ~drop, modality.token_pad_id, side)
    return new_ids, new_mask


def _entry(name: str, fn: ImpairFn, default: float, mutes: bool, description: str) -> Impairment:
    return Impairment(name=name, apply=fn, default_severity=default, mutes=mutes, description=description)


# The registry: modality kind -> impairment name -> Impairment. Users may add their own kinds/names.
IMPAIRMENTS: dict[str, dict[str, Impairment]] = {
    "image": {
        "zero": _entry("zero", _image_zero, 1.0, True, "black image in raw pixel space"),
        "mean": _entry("mean", _image_mean, 1.0, True, "mid-grey image: the middle of value_range"),
        "salt_pepper": _entry("salt_pepper", _salt_pepper, 0.30, False, "each pixel location set to min or max with prob. p"),
        "gaussian": _entry("gaussian", _gaussian, 0.30, False, "additive N(0, sigma^2 var(x)) noise"),
    },
    "text": {
        "empty": _entry("empty", _text_empty, 1.0, True, "the empty string"),
        "token_delete": _entry("token_delete", _token_delete_text, 0.15, False, "each word deleted with prob. p"),
    },
    "tokens": {
        "empty": _entry("empty", _token_ids_empty, 1.0, True, "only special tokens remain, the rest is padding"),
        "token_delete": _entry("token_delete", _token_ids_delete, 0.15, False, "each non-special token deleted with prob. p"),
    },
    "tensor": {
        "zero": _entry("zero", _tensor_zero, 1.0, True, "all zeros"),
        "gaussian": _entry("gaussian", _gaussian, 0.30, False, "additive N(0, sigma^2 var(x)) noise"),
    },
}

# The muting impairment of each kind: what "missing" and "missing_ratio" mean for it.
MISSING_IMPAIRMENT = {"image": "zero", "text": "empty", "tokens": "empty", "tensor": "zero"}
# The default noise of each kind (methods.md section 1 defaults).
NOISY_IMPAIRMENT = {"image": "salt_pepper", "text": "token_delete", "tokens": "token_delete", "tensor": "gaussian"}


def register_impairment(
    kind: str, name: str, fn: ImpairFn, *, default_severity: float, mutes: bool = False, description: str = ""
) -> None:
    """Add a user impairment for a modality kind (a new kind is created if needed)."""
    IMPAIRMENTS.setdefault(kind, {})[name] = _entry(name, fn, default_severity, mutes, description)


def resolve_impairment(kind: str, name: str) -> Impairment:
    table = IMPAIRMENTS.get(kind)
    if table is None:
        raise ConditionError(
            f"No impairments are registered for modality kind {kind!r}. Available kinds: {', '.join(IMPAIRMENTS)}."
        )
    if name == "missing_ratio" and kind in MISSING_IMPAIRMENT:
        name = MISSING_IMPAIRMENT[kind]
    if name not in table:
        raise ConditionError(
            f"Unknown impairment {name!r} for modality kind {kind!r}. Available: {', '.join([*sorted(table), 'missing_ratio'])}."
        )
    return table[name]


def muting_impairment(modality: Modality) -> Impairment:
    """The impairment that removes this modality: its own `missing` choice or its kind's default."""
    registered_mutes = [n for n, i in IMPAIRMENTS.get(modality.kind, {}).items() if i.mutes]
    name = modality.missing or MISSING_IMPAIRMENT.get(modality.kind) or (registered_mutes[0] if registered_mutes else None)
    if name is None:
        raise ConditionError(
            f"Modality {modality.name!r} of kind {modality.kind!r} has no muting impairment; "
            "set Modality(missing=...) to a registered one."
        )
    impairment = resolve_impairment(modality.kind, name)
    if not impairment.mutes:
        mutes = sorted(n for n, i in IMPAIRMENTS[modality.kind].items() if i.mutes)
        raise ConditionError(
            f"Impairment {name!r} does not remove modality {modality.name!r}, so it cannot define 'missing'. "
            f"Available: {', '.join(mutes)}."
        )
    return impairment


def noise_impairment(modality: Modality) -> Impairment:
    """The default noise of the modality's kind (a user kind: its first registered non-muting impairment)."""
    registered = [n for n, i in IMPAIRMENTS.get(modality.kind, {}).items() if not i.mutes]
    name = NOISY_IMPAIRMENT.get(modality.kind) or (registered[0] if registered else None)
    if name is None:
        raise ConditionError(
            f"Modality {modality.name!r} of kind {modality.kind!r} has no noise impairment registered; "
            "register one or leave out 'noisy'."
        )
    return resolve_impairment(modality.kind, name)


def check_severity(severity: float, *, what: str) -> float:
    if not (0.0 <= float(severity) <= 1.0) or severity != severity:
        raise ConditionError(f"Severity {severity} of {what} is outside [0, 1]; expected a number from 0 to 1.")
    return float(severity)


def impair_batch(
    batch: Mapping[str, Any],
    modality: Modality,
    impairment: Impairment,
    severity: float,
    *,
    indices: SampleIndices,
    seed: int,
    tag: str,
) -> dict[str, Any]:
    """A shallow copy of `batch` with this modality's raw input impaired; other keys are shared."""
    out = dict(batch)
    if severity == 0.0:
        return out
    chosen = muted_subset(indices, seed=seed, fraction=severity) if impairment.mutes else np.ones(len(indices), dtype=bool)
    draws = SampleDraws(seed, tag, np.asarray(indices, dtype=np.int64))
    key = modality.batch_key
    if modality.kind == "tokens":
        mask_key = modality.token_mask_key
        ids, mask = impairment.apply((batch[key], batch[mask_key]), modality, severity, chosen, draws)
        out[key], out[mask_key] = ids, mask
    else:
        out[key] = impairment.apply(batch[key], modality, severity, chosen, draws)
    return out
