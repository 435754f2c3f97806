"""The result of `biasaudit.fix`: the fixed model and the audits and comparison that prove the change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

from biasaudit.results.audit import Audit
from biasaudit.results.comparison import Comparison


@dataclass(frozen=True)
class FixResult:
    """`model`: the retrained model (the caller's own object when `inplace=True`, else a trained copy); `before` and
    `after`: audits of the same split, conditions and seed; `comparison`: after vs before; `train_log`: the method's
    settings and per-step losses."""

    model: nn.Module = field(repr=False)
    before: Audit
    after: Audit
    comparison: Comparison
    train_log: Mapping[str, Any] = field(repr=False)
