"""The `fix` methods as small objects the training loop drives, in one explicit registry.

ce       plain cross-entropy fine-tuning: the honest control for every comparison (method_ce.py).
mmdb     adaptive-margin cosine loss, methods.md section 6 (method_mmdb.py).
balgrad  gradient reweighting and projection, methods.md section 7 (method_balgrad.py).
"""

from __future__ import annotations

from typing import Any

from biasaudit.errors import InputError
from biasaudit.training.method_balgrad import BalGrad
from biasaudit.training.method_ce import CrossEntropy
from biasaudit.training.method_mmdb import MMDB

METHODS = {"ce": CrossEntropy, "mmdb": MMDB, "balgrad": BalGrad}


def make_method(name: str, **options: Any):
    if name not in METHODS:
        raise InputError(f"Unknown method {name!r}. Available: {', '.join(METHODS)}.")
    try:
        return METHODS[name](**options)
    except TypeError as exc:
        raise InputError(f"Method {name!r} does not take these options: {exc}.") from exc
