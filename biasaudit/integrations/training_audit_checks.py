"""The options of the training-audit callbacks, checked when a callback is built (before any training work): the scan
settings (as ba.scan takes them), the gate rules and what they target, and which network of the trained object the
adapter calls. The split is checked as ba.scan checks it (biasaudit.data.batches.check_split)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from biasaudit.errors import InputError
from biasaudit.scanning.config import ScanConfig


# ba.scan's settings a training audit does not take: the split is its own parameter, the device is the model's, the
# sharding follows the process group, and what the scan would write or read is the callback's business.
_NOT_TAKEN = ("split", "device", "distributed", "out", "progress", "unimodal_models", "trust_checkpoint", "provenance")


def scan_config(adapter: Any, *, split: str, settings: Mapping[str, Any], where: str) -> tuple[ScanConfig, dict[str, str]]:
    """The ScanConfig of the audits from ba.scan's keyword settings, each checked as ba.scan checks it (the projection
    of the embedding plots defaults to PCA: UMAP at every evaluation would cost more than the scan), and the conditions
    the audits will run (name -> group), which the gate rules' targets are checked against."""
    import dataclasses

    from biasaudit.scanning.config import SETTING_NAMES, config_from_settings, scan_conditions, with_mute_overrides

    fields = {SETTING_NAMES.get(f.name, f.name): f.name for f in dataclasses.fields(ScanConfig) if f.name != "split"}
    available = [name for name in fields if name not in _NOT_TAKEN]
    for name in settings:
        if name not in available:
            why = " (a training audit runs on the model's own device)" if name == "device" else ""
            raise InputError(f"{where} takes no scan setting {name!r}{why}. Available: {', '.join(available)}.")
    config = config_from_settings(
        where=where, split=split, **{"projection": "pca", **{fields[n]: v for n, v in settings.items()}}
    )
    muted = with_mute_overrides(adapter, config.mute, label=f"The 'mute' setting of {where}")
    return config, scan_conditions(config, muted)  # a ConditionError names a condition the adapter cannot run


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


def check_rule_targets(rules: Any, conditions: Mapping[str, str], modalities: Sequence[str], *, spec: str, where: str) -> None:
    """What each rule names must be what the audits will have: a condition they run, a Gap they measure, a modality of
    the adapter. The gate checks the same at every audit (gating/evaluate.py, _check_targets, from an audit's document;
    it could share this code), but there a mistake shows only after an epoch of training: an InputError at the first
    audit, or for max_gap a rule in ERROR, which counts as failed. `conditions` maps the audits' conditions to their
    groups (scanning.config.scan_conditions); `spec` is the 'conditions' setting, for the sentence."""
    if rules is None:
        return
    from biasaudit.gating import ALL, RULES
    from biasaudit.gating.limits import gap_groups

    groups = list(conditions.values())
    gaps = [group for group in gap_groups() if groups.count(group) >= 2]  # a Gap needs two impaired modalities
    known = {"condition": list(conditions), "group": gaps, "modality": list(modalities)}
    setting = f"the 'conditions' setting ({spec!r})"
    for name, rule in RULES.items():
        limits: Mapping[str, float] = getattr(rules, name, None) or {}  # a rule with a key takes a table of limits
        if rule.needs_baseline or rule.key is None or not limits:
            continue
        label = rules.labels.get(name, f"The 'rules' parameter of {where}: {name}")
        available = known[rule.key]
        unknown = [key for key in limits if key != ALL and key not in available]
        if rule.key == "group" and (unknown or not available):
            raise InputError(
                f"{label} judges "
                + (f"the {unknown[0]!r} Gap" if unknown else "every Gap")
                + f", but {setting} measures "
                + (f"only the {' and '.join(available)} Gap" if available else "no Gap")
                + "; expected a Gap the audits have (missing or noisy on two or more modalities)."
            )
        if unknown:
            which = (
                "which the adapter does not have" if rule.key == "modality" else f"which the audits will not run with {setting}"
            )
            raise InputError(
                f"{label} names {rule.key} {unknown[0]!r}, {which}; expected one they have. Available: {', '.join(available)}."
            )


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
