"""The `fix` methods in one explicit registry: each name and where its driver class lives ("module:Class"), imported on
first use. The registry itself imports nothing heavy, so the command line reads its --method choices from here
(cli/choices.py) and `biasaudit --help` still answers without loading torch.

ce       plain cross-entropy fine-tuning: the honest control for every comparison (method_ce.py).
mmdb     adaptive-margin cosine loss, methods.md section 6 (method_mmdb.py).
balgrad  gradient reweighting and projection, methods.md section 7 (method_balgrad.py).
ogm_ge   OGM-GE's on-the-fly gradient modulation with generalisation enhancement, section 8 (method_ogm_ge.py).
mmpareto MMPareto's integration of fused and unimodal gradients, section 8 (method_mmpareto.py).
groupdro Group DRO's loss over (label, bias value) groups, methods.md section 8 (method_group_dro.py).
jtt      Just Train Twice: ERM, the error set, then ERM again with it up-weighted (method_jtt.py).
dandr    Diagnosing & Re-learning: plain CE with soft re-initialisations at epoch ends (method_dandr.py).
dfr      Deep Feature Reweighting: a post-hoc refit of the final linear layer, no training loop (method_dfr.py).

All but ce and mmdb wrap the components of biasaudit.methods, called as a user's own loop calls them. A driver is the
class the loop drives (driver.py's TrainingMethod); its optional class attribute `option_grid` names the one option
"auto" chooses on validation data and that option's grid (selection.py reads it).
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

from biasaudit.errors import InputError

# What `biasaudit fix` and `biasaudit.fix` run when not told: MMDB, its scale chosen on validation data.
DEFAULT_METHOD = "mmdb"
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {"mmdb": {"scale": "auto"}}


class Registered(NamedTuple):
    """A registry entry: where the driver class lives ("module:Class"), and what the method acts on (methods.md
    section 8): "reliance" (it strengthens the modality the model uses less), "bias" (it acts on the bias itself) or
    "neither" (the control, and re-learning). `fix` warns before training when the before-audit's diagnosis works
    against what a method acts on (diagnosis.py)."""

    driver: str
    acts_on: str


METHODS: dict[str, Registered] = {
    "ce": Registered("biasaudit.training.method_ce:CrossEntropy", "neither"),
    "mmdb": Registered("biasaudit.training.method_mmdb:MMDB", "bias"),
    "balgrad": Registered("biasaudit.training.method_balgrad:BalGrad", "reliance"),
    "ogm_ge": Registered("biasaudit.training.method_ogm_ge:OGMGE", "reliance"),
    "mmpareto": Registered("biasaudit.training.method_mmpareto:MMPareto", "reliance"),
    "groupdro": Registered("biasaudit.training.method_group_dro:GroupDRO", "bias"),
    "jtt": Registered("biasaudit.training.method_jtt:JTT", "bias"),
    "dandr": Registered("biasaudit.training.method_dandr:DandR", "neither"),
    "dfr": Registered("biasaudit.training.method_dfr:DFR", "bias"),
}


def acting_on(kind: str) -> tuple[str, ...]:
    """The methods that act on `kind` ("reliance", "bias" or "neither"), in registry order."""
    return tuple(name for name, entry in METHODS.items() if entry.acts_on == kind)


def method_class(name: str) -> type:
    """The driver class of method `name`, imported now (InputError naming the available methods for an unknown name)."""
    if name not in METHODS:
        raise InputError(f"Unknown method {name!r}. Available: {', '.join(METHODS)}.")
    module, _, attribute = METHODS[name].driver.partition(":")
    driver: type = getattr(importlib.import_module(module), attribute)
    return driver


def make_method(name: str, **options: Any) -> Any:
    driver = method_class(name)
    try:
        return driver(**options)
    except TypeError as exc:
        raise InputError(f"Method {name!r} does not take these options: {exc}.") from exc
