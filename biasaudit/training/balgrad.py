"""The BalGrad names older code imports from here (the parameter split now lives in branch_heads.py, shared with
OGM-GE and MMPareto). The math lives in biasaudit/methods/_balgrad_math.py (methods.md section 7), the component
for any loop in biasaudit/methods/balgrad.py.
"""

from __future__ import annotations

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
from biasaudit.training.branch_heads import split_parameters

StepLog = BalGradStep  # its name before the component existed

__all__ = ["KL_MODES", "PROJECTIONS", "SCHEDULES", "BalGradStep", "StepLog", "LambdaSchedule", "RunningLosses",
           "balgrad_step", "kl_weights", "mutual_kl", "project_conflict", "split_parameters"]
