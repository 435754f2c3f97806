"""digits-captions: real handwritten digits paired with captions whose colour word is a shortcut.

Images are scikit-learn's `load_digits` (1,797 real 8x8 digits, pixels 0..16 scaled to [0, 1]).
Each digit class i owns a colour word, COLOURS[i], and every image gets a short caption that
contains exactly one colour word (e.g. "a red digit on white paper"); the caption template is
drawn at random and carries no information about the label, so the colour word is the only
label-relevant word in the text. The colour index is the bias value.

- train / test: the colour is the label's colour with probability `rho`, otherwise a uniformly
  drawn *other* colour (a spurious correlation, as in coloured MNIST).
- ood: the colour is uniform over all ten, independent of the label (the shortcut misleads).
- val: bias-balanced by default, colours drawn like ood's (independently, from its own stream), as
  the validation split of Waterbirds is group-balanced: it is the small group-annotated set that
  model selection (MMDB's `--scale auto`) scores bias-balanced accuracy on. An iid val split of 180
  samples holds only 5-10 colour-conflicting samples, too few to rank candidates: measured over seeds
  0-2, scale auto then picked s = 4, 1, 2 (OOD 45, 16, 33%, mean 31.4) where s = 4 gave 45, 50, 54%;
  with this balanced val it picks s = 4 on all three.
  `balanced_val=False` draws val like train.

Clean 8x8 digits are so easy that a model learns them first and ignores the text even at
rho = 1. Real image+text tasks are the other way round (the text is the easy modality), so every
image carries fixed Gaussian pixel noise of std `noise` (drawn once per sample from the seed,
part of the dataset, then clipped to [0, 1] so the valid pixel range stays well defined for
salt-and-pepper impairments). See `biasaudit.datasets.demo_model` for the measured effect.

Every random choice derives from `seed` through its own stream, so changing `rho` leaves the
split, the noise and the caption templates unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from biasaudit.errors import InputError

# One colour word per digit class; none of them appears anywhere else in a caption.
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "grey", "black")
DIGIT_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {colour} digit on white paper",
    "a handwritten digit in {colour} ink",
    "the number is written in {colour}",
    "a small {colour} numeral scanned from a form",
    "{colour} ink on a white page",
)
SPLITS: tuple[str, ...] = ("train", "val", "test", "ood")
# Fractions of the 1,797 digits in each split (stratified by label).
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.55, "val": 0.10, "test": 0.17, "ood": 0.18}
DEFAULT_RHO = 0.95
DEFAULT_NOISE = 0.5

# Independent random streams, so one choice never shifts another.
_STREAM_SPLIT, _STREAM_NOISE, _STREAM_COLOUR, _STREAM_TEMPLATE = 0, 1, 2, 3


@dataclass(frozen=True)
class DigitsCaptionsSplit:
    """One split: images float32 [N, 1, 8, 8] in [0, 1], N captions, labels and colours (long [N])."""

    images: torch.Tensor
    captions: list[str]
    labels: torch.Tensor
    colours: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def vocabulary() -> tuple[str, ...]:
    """Every word a caption can contain, in a fixed order (the bag-of-words vocabulary)."""
    words: list[str] = []
    for template in CAPTION_TEMPLATES:
        for word in template.split():
            if word != "{colour}" and word not in words:
                words.append(word)
    return tuple(words) + COLOURS


def _check_options(rho: float, noise: float, seed: int) -> None:
    if not (0.0 <= float(rho) <= 1.0):
        raise InputError(f"rho={rho} is outside [0, 1]; expected the probability that the colour word matches the label.")
    if not (float(noise) >= 0.0):
        raise InputError(f"noise={noise} is negative; expected a pixel noise standard deviation of 0 or more.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed={seed!r} is not a non-negative integer.")


def _split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Seeded, stratified split of all sample indices into the four splits."""
    n = len(labels)
    sizes = {name: round(fraction * n) for name, fraction in SPLIT_FRACTIONS.items()}
    rest = np.arange(n)
    out: dict[str, np.ndarray] = {}
    state = np.random.RandomState(np.random.default_rng([seed, _STREAM_SPLIT]).integers(2**31))
    for name in ("ood", "test", "val"):
        rest, taken = train_test_split(rest, test_size=sizes[name], stratify=labels[rest], random_state=state)
        out[name] = np.sort(taken)
    out["train"] = np.sort(rest)
    return {name: out[name] for name in SPLITS}


def _draw_colours(labels: np.ndarray, *, rho: float, independent: bool, rng: np.random.Generator) -> np.ndarray:
    k = len(COLOURS)
    if independent:
        return rng.integers(0, k, size=len(labels))
    matches = rng.random(len(labels)) < rho
    # A uniformly random *other* colour: shift the label's colour by 1..k-1.
    others = (labels + rng.integers(1, k, size=len(labels))) % k
    return np.where(matches, labels, others)


def load_digits_captions(
    *, rho: float = DEFAULT_RHO, noise: float = DEFAULT_NOISE, seed: int = 0, balanced_val: bool = True
) -> dict[str, DigitsCaptionsSplit]:
    """The four splits of digits-captions ("train", "val", "test", "ood"), deterministic for a seed."""
    _check_options(rho, noise, seed)
    digits = load_digits()
    labels = digits.target.astype(np.int64)
    pixels = digits.images.astype(np.float64) / 16.0
    noise_rng = np.random.default_rng([seed, _STREAM_NOISE])
    pixels = np.clip(pixels + noise * noise_rng.standard_normal(pixels.shape), 0.0, 1.0)
    templates = np.random.default_rng([seed, _STREAM_TEMPLATE]).integers(0, len(CAPTION_TEMPLATES), size=len(labels))

    out: dict[str, DigitsCaptionsSplit] = {}
    for split_id, (name, idx) in enumerate(_split_indices(labels, seed).items()):
        colour_rng = np.random.default_rng([seed, _STREAM_COLOUR, split_id])
        colours = _draw_colours(
            labels[idx], rho=rho, independent=name == "ood" or (balanced_val and name == "val"), rng=colour_rng
        )
        captions = [CAPTION_TEMPLATES[t].format(colour=COLOURS[c]) for t, c in zip(templates[idx], colours, strict=True)]
        out[name] = DigitsCaptionsSplit(
            images=torch.from_numpy(pixels[idx]).to(torch.float32).unsqueeze(1),
            captions=captions,
            labels=torch.from_numpy(labels[idx]),
            colours=torch.from_numpy(colours.astype(np.int64)),
        )
    return out
