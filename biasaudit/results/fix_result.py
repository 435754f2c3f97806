"""The result of `biasaudit.fix`: the fixed model and the audits and comparison that prove the change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from biasaudit.results.audit import Audit
from biasaudit.results.comparison import Comparison


@dataclass(frozen=True)
class FixResult:
    """`model`: the retrained model (the caller's own object when `inplace=True`, else a trained copy); `before` and
    `after`: audits of the same split, conditions and seed; `comparison`: after vs before; `train_log`: the method's
    settings and per-step losses; `also`: the second split's audits and comparison (`also_split`), or None."""

    model: nn.Module = field(repr=False)
    before: Audit
    after: Audit
    comparison: Comparison
    train_log: Mapping[str, Any] = field(repr=False)
    also: AlsoSplitResult | None = None


@dataclass(frozen=True)
class AlsoSplitResult:
    """The second split of a fix (e.g. the in-distribution test split beside an OOD one), audited the same way: its
    `split`, the `before` and `after` audits and their `comparison`."""

    split: str
    before: Audit
    after: Audit
    comparison: Comparison
