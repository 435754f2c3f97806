"""The optimisers `fix` trains with, in one explicit registry: the loop builds one from the training settings.

adam   torch.optim.Adam (the default, as fix has always trained); `weight_decay` is Adam's L2 term.
adamw  torch.optim.AdamW: decoupled weight decay (Loshchilov & Hutter), what most fine-tuning recipes use.
sgd    torch.optim.SGD with `momentum` (0: plain SGD).

Momentum belongs to SGD alone: asked of Adam or AdamW it would be ignored, so it is refused instead.
"""

from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable, Iterable

import torch
from torch import nn

from biasaudit.errors import InputError

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda params, *, lr, weight_decay, momentum: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
    "adamw": lambda params, *, lr, weight_decay, momentum: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
    "sgd": lambda params, *, lr, weight_decay, momentum: torch.optim.SGD(
        params, lr=lr, weight_decay=weight_decay, momentum=momentum
    ),
}


def check_optimizer(name: Any, *, weight_decay: Any, momentum: Any) -> None:
    """The optimiser's settings, checked before any work; messages name the settings as fix's options do."""
    if name not in OPTIMIZERS:
        raise InputError(f"optimizer is {name!r}, which is unknown. Available: {', '.join(OPTIMIZERS)}.")
    for setting, value, upper in (("weight_decay", weight_decay, math.inf), ("momentum", momentum, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < upper:
            expected = "a finite number >= 0" if upper == math.inf else "a number from 0 up to (not including) 1"
            raise InputError(f"{setting} is {value!r}; expected {expected}.")
    if momentum and name != "sgd":
        raise InputError(
            f"momentum {momentum} applies to the sgd optimizer only; {name} would ignore it. Use the sgd "
            "optimizer, or leave momentum out."
        )


def make_optimizer(
    params: Iterable[nn.Parameter], *, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.0
) -> torch.optim.Optimizer:
    check_optimizer(name, weight_decay=weight_decay, momentum=momentum)
    return OPTIMIZERS[name](list(params), lr=lr, weight_decay=weight_decay, momentum=momentum)
