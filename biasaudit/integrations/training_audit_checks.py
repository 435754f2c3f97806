"""The options of the training-audit callbacks, checked when a callback is built (before any training work): the scan
settings (as ba.scan takes them), the gate rules, and which network of the trained object the adapter calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from biasaudit.errors import DataError, InputError
from biasaudit.scanning.config import ScanConfig


# ba.scan's settings a training audit does not take: the split is its own parameter, the device is the model's, the
# sharding follows the process group, and what the scan would write or read is the callback's business.
_NOT_TAKEN = ("split", "device", "distributed", "out", "progress", "unimodal_models", "trust_checkpoint", "provenance")
_SPELLED = {"bootstrap_replicates": "bootstrap"}  # ScanConfig field -> the name ba.scan takes it by


def check_split(adapter: Any, split: Any, *, where: str) -> None:
    splits = list(getattr(adapter, "splits", ()))
    if not isinstance(split, str) or split not in splits:
        raise DataError(
            f"The 'split' parameter of {where} is {split!r}, which the adapter does not offer; expected the split to "
            f"audit. Available: {', '.join(splits)}."
        )


def scan_config(adapter: Any, *, split: str, settings: Mapping[str, Any], where: str) -> ScanConfig:
    """The ScanConfig of the audits from ba.scan's keyword settings, each checked as ba.scan checks it; the
    projection of the embedding plots defaults to PCA (UMAP at every evaluation would cost more than the scan)."""
    import dataclasses

    from biasaudit.scanning.config import check_conditions, config_from_settings, with_mute_overrides

    fields = {_SPELLED.get(f.name, f.name): f.name for f in dataclasses.fields(ScanConfig) if f.name != "split"}
    available = [name for name in fields if name not in _NOT_TAKEN]
    for name in settings:
        if name not in available:
            why = " (a training audit runs on the model's own device)" if name == "device" else ""
            raise InputError(f"{where} takes no scan setting {name!r}{why}. Available: {', '.join(available)}.")
    config = config_from_settings(
        where=where, split=split, **{"projection": "pca", **{fields[n]: v for n, v in settings.items()}}
    )
    with_mute_overrides(adapter, config.mute, label=f"The 'mute' setting of {where}")
    check_conditions(config.conditions, adapter)
    return config


def check_rules(rules: Any, *, where: str) -> Any:
    """GateRules from a GateRules or a mapping of rule name -> limits (None: no gate). Only the rules that judge one
    audit alone are taken: the ones that compare against a baseline audit have none during training."""
    from biasaudit.gating import RULES, GateRules

    alone = [name for name, rule in RULES.items() if not rule.needs_baseline]
    if rules is None or (isinstance(rules, Mapping) and not rules):
        return None
    if isinstance(rules, Mapping):
        for name in rules:
            if name not in alone:
                compares = name in RULES
                raise InputError(
                    f"The 'rules' parameter of {where} names "
                    + (
                        f"{name!r}, which compares against a baseline audit that training has not; "
                        if compares
                        else f"no gate rule {name!r}; "
                    )
                    + f"expected rules that judge one audit. Available: {', '.join(alone)}."
                )
        rules = GateRules(**rules, labels={name: f"The 'rules' parameter of {where}: {name}" for name in rules})
    if not isinstance(rules, GateRules):
        raise InputError(
            f"The 'rules' parameter of {where} is a {type(rules).__name__}; expected ba.GateRules or a mapping of rule "
            f"name to limits, e.g. {{'min_worst_group': {{'full': 60}}}}."
        )
    comparing = rules.comparing
    if comparing:
        raise InputError(
            f"The 'rules' parameter of {where} sets {comparing[0]}, which compares against a baseline audit that "
            f"training has not; expected rules that judge one audit. Available: {', '.join(alone)}."
        )
    return None if rules.is_empty else rules


def check_model_choice(model: Any, *, where: str) -> None:
    if model is not None and not isinstance(model, str) and not callable(model):
        raise InputError(
            f"The 'model' parameter of {where} must be None (the trained model itself), the name of its attribute "
            f"holding the network the adapter calls (e.g. 'net'), or a function returning it; got {type(model).__name__}."
        )


def module_to_audit(trained: Any, model: Any, *, where: str) -> nn.Module:
    """The network the adapter calls: `trained` itself (model None), its attribute `model`, or model(trained)."""
    if model is None:
        chosen = trained
    elif isinstance(model, str):
        chosen = getattr(trained, model, None)
        if chosen is None:
            raise InputError(
                f"The 'model' parameter of {where} names attribute {model!r}, which {type(trained).__name__} does not "
                "have; expected the attribute holding the network the adapter calls."
            )
    else:
        chosen = model(trained)
    if not isinstance(chosen, nn.Module):
        raise InputError(
            f"The network {where} is to audit is a {type(chosen).__name__}; expected a torch.nn.Module "
            "(see its 'model' parameter)."
        )
    return chosen
