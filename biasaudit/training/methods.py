"""The `fix` methods as small objects the training loop drives, in one explicit registry.

ce       plain cross-entropy fine-tuning: the honest control for every comparison (method_ce.py).
mmdb     adaptive-margin cosine loss, methods.md section 6 (method_mmdb.py).
balgrad  gradient reweighting and projection, methods.md section 7 (method_balgrad.py).
ogm_ge   OGM-GE's on-the-fly gradient modulation with generalisation enhancement, section 8 (method_ogm_ge.py).
mmpareto MMPareto's integration of fused and unimodal gradients, section 8 (method_mmpareto.py).
groupdro Group DRO's loss over (label, bias value) groups, methods.md section 8 (method_group_dro.py).
jtt      Just Train Twice: ERM, the error set, then ERM again with it up-weighted (method_jtt.py).
dandr    Diagnosing & Re-learning: plain CE with soft re-initialisations at epoch ends (method_dandr.py).
dfr      Deep Feature Reweighting: a post-hoc refit of the final linear layer, no training loop (method_dfr.py).

All but ce and mmdb wrap the components of biasaudit.methods, called as a user's own loop calls them.
"""

from __future__ import annotations

from typing import Any

from biasaudit.errors import InputError
from biasaudit.training.method_balgrad import BalGrad
from biasaudit.training.method_ce import CrossEntropy
from biasaudit.training.method_dandr import DandR
from biasaudit.training.method_dfr import DFR
from biasaudit.training.method_group_dro import GroupDRO
from biasaudit.training.method_jtt import JTT
from biasaudit.training.method_mmdb import MMDB
from biasaudit.training.method_mmpareto import MMPareto
from biasaudit.training.method_ogm_ge import OGMGE

# What `biasaudit fix` and `biasaudit.fix` run when not told: MMDB, its scale chosen on validation data.
DEFAULT_METHOD = "mmdb"
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {"mmdb": {"scale": "auto"}}

METHODS = {"ce": CrossEntropy, "mmdb": MMDB, "balgrad": BalGrad, "ogm_ge": OGMGE, "mmpareto": MMPareto,
           "groupdro": GroupDRO, "jtt": JTT, "dandr": DandR, "dfr": DFR}


def make_method(name: str, **options: Any):
    if name not in METHODS:
        raise InputError(f"Unknown method {name!r}. Available: {', '.join(METHODS)}.")
    try:
        return METHODS[name](**options)
    except TypeError as exc:
        raise InputError(f"Method {name!r} does not take these options: {exc}.") from exc
