"""The typed, frozen result of `biasaudit.gate` (schema `biasaudit.gate`): one verdict per rule and the overall one."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from biasaudit._core.arguments import checked, document_with, reading_document
from biasaudit.results.audit import frozen_document, thawed_document


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict. Fields: `rule` (its name, e.g. max_gap), `status` (PASS, WARN, FAIL or ERROR), `message` (the
    sentence, with its figures) and `figures` (the numbers it was judged on)."""

    rule: str
    status: str  # PASS | WARN | FAIL | ERROR
    message: str
    figures: Mapping[str, Any]


@dataclass(frozen=True)
class GateResult:
    """`status` is ERROR when a rule cannot be evaluated on these audits, else FAIL when any rule fails, else WARN or
    PASS; `exit_code` is what `biasaudit gate` exits with (2, 1, 0); `passed` is True for PASS and WARN.

    Fields: `document` (the gate document, read-only), `status`, `exit_code`, `rules` (one RuleResult per verdict).
    """

    document: Mapping[str, Any] = field(repr=False)
    status: str
    exit_code: int
    rules: tuple[RuleResult, ...]

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    @classmethod
    @checked("GateResult.from_dict", document=document_with("status", "exit_code", "rules",
                                                             what="a gate document, as GateResult.to_dict() returns"))
    def from_dict(cls, document: Mapping[str, Any]) -> GateResult:
        with reading_document("GateResult.from_dict", "a gate document"):
            frozen = frozen_document(copy.deepcopy(dict(document)))
            return cls(document=frozen, status=document["status"], exit_code=int(document["exit_code"]),
                       rules=tuple(RuleResult(r["rule"], r["status"], r["message"], f) for r, f in
                                   zip(document["rules"], (rule["figures"] for rule in frozen["rules"]), strict=True)))

    @checked("GateResult.to_dict")
    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = thawed_document(self.document)
        return document
