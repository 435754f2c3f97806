"""BalGrad's parameter split for biasaudit's loop (an adapter names the branches), and the names the CLI and older
code import from here. The math lives in biasaudit/methods/_balgrad_math.py (methods.md section 7), the component
for any loop in biasaudit/methods/balgrad.py.
"""

from __future__ import annotations

from typing import Mapping

from torch import nn

from biasaudit.errors import AdapterError
from biasaudit.methods._balgrad_math import (
    KL_MODES,
    PROJECTIONS,
    SCHEDULES,
    BalGradStep,
    LambdaSchedule,
    RunningLosses,
    balgrad_step,
    kl_weights,
    mutual_kl,
    project_conflict,
)

StepLog = BalGradStep  # its name before the component existed

__all__ = ["KL_MODES", "PROJECTIONS", "SCHEDULES", "BalGradStep", "StepLog", "LambdaSchedule", "RunningLosses",
           "balgrad_step", "kl_weights", "mutual_kl", "project_conflict", "split_parameters"]


def split_parameters(model: nn.Module, branches: Mapping[str, nn.Module]) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
    """(θ_T, {m: θ_m}): trainable parameters of each branch module, and every other trainable one."""
    owned = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    groups: dict[str, list[nn.Parameter]] = {}
    for name, module in branches.items():
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise AdapterError(f"The branch {name!r} named by the adapter's branches() has no trainable "
                               f"parameters; BalGrad needs a trainable embedding layer per modality.")
        for p in params:
            if id(p) not in owned:
                raise AdapterError(f"The branch {name!r} from branches() is not part of the model.")
            if id(p) in seen:
                raise AdapterError(f"The branch {name!r} from branches() shares parameters with another "
                                   f"branch; each modality needs its own.")
            seen.add(id(p))
        groups[name] = params
    task = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    return task, groups
