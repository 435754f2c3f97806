"""`biasaudit gate`: rules over an audit (and optionally a baseline audit) -> PASS / WARN / FAIL / ERROR verdicts -> an
exit code for CI.

  registry.py  every rule (RULES: name -> Rule): its kind, whether it needs a baseline, its description, its limits, its
               evaluator; and GateRules, the limits a gate judges by (one field per rule). Bias rules (bias.py) are
               recommended first: they measure the shortcut (methods.md section 9).
               Reliance rules (reliance.py): the Gaps grow when a model uses the more informative modality better, so a
               Gap ratchet can block a de-biased model (docs/gating.md).
  limits.py    parsing a rule's limits, one path for Python, the command line and the config file.
  evaluate.py  evaluate_gate: the verdicts, the overall status and the exit code.
  verdicts.py  RuleVerdict and the judgements the rule families share (`significant`).
  changes.py   the document's `changes` block: the measures that moved most against the baseline (for the summary).

Nothing here imports torch at import time (the command line's help reads the registry); comparing is imported when a
rule compares. docs/gating.md, "Adding a gate rule", walks through a new rule.
"""

from __future__ import annotations

from biasaudit.gating.limits import ALL, JSD_STATISTICS, DropLimit, LimitOption, parse_statistic
from biasaudit.gating.registry import BASELINE_RULES, OPTIONS, RULES, GateRules, Rule, parse_limits, rule_named
from biasaudit.gating.evaluate import check_audit_shape, evaluate_gate
from biasaudit.gating.verdicts import STATUSES, RuleVerdict

__all__ = [
    "ALL",
    "BASELINE_RULES",
    "JSD_STATISTICS",
    "OPTIONS",
    "RULES",
    "STATUSES",
    "DropLimit",
    "GateRules",
    "LimitOption",
    "Rule",
    "RuleVerdict",
    "check_audit_shape",
    "evaluate_gate",
    "parse_limits",
    "parse_statistic",
    "rule_named",
]
