"""A scan's settings (ScanConfig) and the checks of the machine they run on: the device, the precision of the
forwards, and what "missing" means for each modality (--mute). The entry point the layers above read a scan's settings
from (tests/test_import_graph.py)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from biasaudit.data.adapter import Adapter
from biasaudit.data.impairments import IMPAIRMENTS
from biasaudit.diagnostics.ceilings import DEFAULT_PER_CLASS
from biasaudit.diagnostics.donors import DEFAULT_CAPACITY
from biasaudit.diagnostics.favoured import DEFAULT_FAVOURED_FRACTION
from biasaudit.diagnostics.groups import GROUPINGS
from biasaudit.diagnostics.interaction import DEFAULT_DONORS
from biasaudit.errors import InputError

PROJECTIONS = ("umap", "pca")
# The forwards' precision: fp32, or autocast to bfloat16 / float16 on CUDA (logits are read back in float32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# ScanConfig field -> the name a Python caller passes it by (ba.scan, the training-audit callbacks) and errors say, where
# the two differ: one map, so that every keyword entry point spells a setting alike.
SETTING_NAMES = {"bootstrap_replicates": "bootstrap"}


def with_mute_overrides(adapter: Adapter, mute: tuple[tuple[str, str], ...], *, label: str = "--mute") -> Adapter:
    """A shallow copy of the adapter whose modalities use the requested muting impairments. `label` names the
    setting in errors (the flag; from Python, the parameter)."""
    if not mute:
        return adapter
    names = [m.name for m in adapter.modalities]
    overrides = dict(mute)
    for name in overrides:
        if name not in names:
            raise InputError(f"{label} names modality {name!r}. Available: {', '.join(names)}.")
    for m in adapter.modalities:
        # Checked here, before any work, against the impairments that really mute this kind.
        mutes = sorted(n for n, impairment in IMPAIRMENTS.get(m.kind, {}).items() if impairment.mutes)
        if m.name in overrides and overrides[m.name] not in mutes:
            raise InputError(
                f"{label} gives {m.name}={overrides[m.name]}, but {overrides[m.name]!r} is not a muting impairment of "
                f"{m.kind} modality {m.name!r}. Available: {', '.join(mutes)}."
            )
    copied = copy.copy(adapter)
    copied.modalities = [replace(m, missing=overrides.get(m.name, m.missing)) for m in adapter.modalities]
    copied.reads_as = getattr(adapter, "reads_as", adapter)  # the same data: split reads are shared with the original
    return copied


# ScanConfig field -> (the setting's name on the command line and in config files, its least value).
# field: (the setting's name in messages, its least value[, its greatest value])
_INTEGER_SETTINGS: dict[str, tuple[str, int] | tuple[str, int, int]] = {
    "batch_size": ("batch_size", 1),
    "seed": ("seed", 0, 2**64 - 1),
    "bootstrap_replicates": ("bootstrap", 10),
    "embedding_points": ("embedding_points", 10),
    "min_wrong": ("min_wrong", 1),
    "gradient_batches": ("gradient_batches", 1),
    "kmeans_k": ("kmeans_k", 2),
    "min_group": ("min_group", 1),
    "donor_pool": ("donor_pool", 1),
    "ceiling_per_class": ("ceiling_per_class", 1),
    "interaction_donors": ("interaction_donors", 1),
    "draws": ("draws", 1),
}


@dataclass(frozen=True)
class ScanConfig:
    split: str = "test"
    conditions: str = "default"
    batch_size: int = 256
    seed: int = 0
    device: str = "cpu"
    bootstrap_replicates: int = 1000
    embedding_points: int = 5000
    projection: str = "umap"
    min_wrong: int = 30
    gradient_batches: int = 8
    kmeans_k: int = 16
    mute: tuple[tuple[str, str], ...] = ()  # (modality, muting impairment) overrides of what "missing" means
    mute_compare: bool = False  # also measure the other muting choice of each modality (image: zero and mean)
    min_group: int = 10  # smallest (label, bias value) group that enters worst-group and bias-balanced accuracy
    group_by: str = "auto"  # bias: (label, bias value); alignment: (label, aligned/conflicting); auto: see diagnostics/groups.py
    donor_pool: int = DEFAULT_CAPACITY  # donors kept per (label, bias value) for the carrier and interaction swaps
    ceiling_per_class: int = (
        DEFAULT_PER_CLASS  # samples per class of the probe split (val, else train) a ceiling probe is fitted on
    )
    interaction_donors: int = DEFAULT_DONORS
    precision: str = "fp32"
    # F(k): the classes with a training share >= this fraction of bias value k's largest (and above 1/C); diagnostics/favoured.py.
    favoured_fraction: float = DEFAULT_FAVOURED_FRACTION
    draws: int = (
        1  # independent draws of every random condition (noise, ratio subsets, probe samples); biasaudit/scanning/draws.py
    )

    def __post_init__(self) -> None:
        if self.projection not in PROJECTIONS:
            raise InputError(f"Projection {self.projection!r} is unknown. Available: {', '.join(PROJECTIONS)}.")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision is {self.precision!r}, which is unknown. Available: {', '.join(PRECISIONS)}.")
        if self.group_by not in GROUPINGS:
            raise InputError(f"group_by is {self.group_by!r}, which is unknown. Available: {', '.join(GROUPINGS)}.")
        # One check for every source (command line, config file, Python): the messages start with the setting's
        # name as the config file and the CLI know it, so the CLI can say where a bad value came from.
        for field_name, (name, least, *most) in _INTEGER_SETTINGS.items():
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least or (most and value > most[0]):
                expected = (
                    ("a positive integer" if least == 1 else f"an integer of at least {least}")
                    if not most
                    else f"an integer from {least} to 2**64 - 1"
                )
                raise InputError(f"{name} is {value!r}; expected {expected}.")
        fraction = self.favoured_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise InputError(f"favoured_fraction is {fraction!r}; expected a number above 0 and at most 1.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str, *, label: str = "Device", cpu: str = "--device cpu") -> torch.device:
    """`label` and `cpu` word the errors for the caller (the flag, or a Python parameter and keyword)."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"{label} {name!r} is not a torch device name; expected e.g. cpu, cuda or cuda:0.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{label} {name!r} was requested but CUDA is not available on this machine; use {cpu}.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(
            f"{label} {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0."
        )
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """Autocast to 16 bits is offered on CUDA only: on the CPU it is slow or unsupported for many operators."""
    if PRECISIONS.get(precision) is not None and device.type != "cuda":
        raise InputError(f"precision is {precision!r}, which needs a CUDA device; this run is on {device.type}. Use fp32 there.")


def config_from_settings(*, where: str, **settings: Any) -> ScanConfig:
    """ScanConfig from keyword settings named as ScanConfig's fields, each checked against its field's type first
    (`where` names the call in errors; `bootstrap_replicates` is spelled `bootstrap` there). The documented forms a
    Python caller may use are made the CLI's: a list of conditions is joined with commas, a mute mapping becomes
    (modality, impairment) pairs, so both record the same manifest."""
    import typing
    from collections.abc import Mapping

    from biasaudit._core.annotations import conforms, plain
    from biasaudit._core.arguments import check_argument, shown
    from biasaudit.errors import ArgumentTypeError

    hints = typing.get_type_hints(ScanConfig)
    if "conditions" in settings and not isinstance(settings["conditions"], str):
        settings["conditions"] = ",".join(settings["conditions"])
    mute = settings.get("mute")
    if isinstance(mute, Mapping):
        check_argument(mute, Mapping[str, str], parameter="mute", where=where)
        settings["mute"] = tuple(mute.items())
    elif mute is not None and not conforms(mute, hints["mute"]):
        raise ArgumentTypeError(
            f"The 'mute' parameter of {where} must be a mapping of modality to muting impairment, e.g. "
            f"{{'image': 'mean'}}; got {shown(mute)}."
        )
    for name, value in settings.items():
        check_argument(value, hints[name], parameter=SETTING_NAMES.get(name, name), where=where)
    return ScanConfig(**plain(settings))


def check_conditions(conditions: str, adapter: Adapter) -> None:
    """The conditions named in a ScanConfig exist for the adapter's modalities (a ConditionError says which does not)."""
    from biasaudit.scanning.conditions import parse_conditions

    parse_conditions(conditions, adapter.modalities)


def scan_conditions(config: ScanConfig, adapter: Adapter) -> dict[str, str]:
    """The conditions a scan with `config` runs on `adapter` (with its mute overrides applied: with_mute_overrides), by
    the names its audit's conditions carry, each with its group (full, missing, noisy, ratio, custom, mute_compare):
    what a gate rule may target, known before the scan."""
    from biasaudit.scanning.conditions import parse_conditions
    from biasaudit.scanning.setup import mute_compare_conditions

    conditions = parse_conditions(config.conditions, adapter.modalities)
    if config.mute_compare:
        conditions += mute_compare_conditions(adapter)
    return {c.name: c.group for c in conditions}
