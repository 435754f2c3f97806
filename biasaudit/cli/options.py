"""Parsers of option values shared by several commands."""

from __future__ import annotations

from pathlib import Path


def parse_mute(values: list[str]) -> tuple[tuple[str, str], ...]:
    from biasaudit.errors import InputError

    pairs = []
    for value in values:
        if not isinstance(value, str):  # a config file can hold any TOML value
            raise InputError(f"--mute {value!r} is not of the form MODALITY=IMPAIRMENT, e.g. image=mean.")
        name, sep, impairment = value.partition("=")
        if not sep or not name or not impairment:
            raise InputError(f"--mute {value!r} is not of the form MODALITY=IMPAIRMENT, e.g. image=mean.")
        pairs.append((name, impairment))
    return tuple(pairs)


def parse_unimodal(values: list[str]) -> dict[str, Path]:
    """--unimodal MODALITY=CHECKPOINT items, by modality (ba.scan checks the modalities and the files)."""
    from biasaudit.errors import InputError

    pairs: dict[str, Path] = {}
    for value in values:
        name, sep, path = str(value).partition("=")
        if not sep or not name or not path:
            raise InputError(f"--unimodal {value!r} is not of the form MODALITY=CHECKPOINT, e.g. image=image_only.pt.")
        pairs[name] = Path(path)
    return pairs


def number_or_auto(text: str, flag: str) -> float | str:
    """A number, or 'auto' (chosen on validation data); the method checks the number's range, naming `flag`."""
    from biasaudit.errors import InputError

    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{flag} {text!r} is neither 'auto' nor a number.") from None


def _scale(text: str) -> float | str:
    from biasaudit.errors import InputError

    value = number_or_auto(text, "--scale")
    if isinstance(value, float) and not 0 < value < float("inf"):  # else "auto"
        raise InputError(f"--scale {text} must be a positive, finite number.")
    return value


# The audit settings of `fix`, by the flags that set them (some differ from scan's: --scan-batch-size, ...).
FIX_SCAN_FLAGS = {
    "seed": "--seed",
    "batch_size": "--scan-batch-size",
    "bootstrap": "--bootstrap",
    "embedding_points": "--embedding-points",
    "min_wrong": "--min-wrong",
    "gradient_batches": "--gradient-batches",
    "kmeans_k": "--kmeans-k",
    "min_group": "--audit-min-group",
    "ceiling_per_class": "--ceiling-per-class",
    "group_by": "--group-by",
    "favoured_fraction": "--favoured-fraction",
    "draws": "--draws",
}
