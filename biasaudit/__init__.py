"""biasaudit: find, measure and fix modality bias in multimodal PyTorch classifiers."""

import logging

from biasaudit.adapter import Adapter, Modality
from biasaudit.api import compare, fix, gate, leaderboard, merge_leaderboard, scan
from biasaudit.errors import BiasAuditError
from biasaudit.gating import GateRules
from biasaudit.results.audit import Audit, ConditionResult, GapSummary, Summary
from biasaudit.results.comparison import Change, Comparison
from biasaudit.results.fix_result import FixResult
from biasaudit.results.gate_result import GateResult, RuleResult
from biasaudit.results.leaderboard_result import LeaderboardResult

# Standard logging, off unless the application configures it (e.g. logging.basicConfig(level=logging.INFO)): the
# library logs only at INFO and DEBUG under the "biasaudit" logger, and never prints.
logging.getLogger("biasaudit").addHandler(logging.NullHandler())

__version__ = "0.1.0"
__all__ = ["scan", "fix", "leaderboard", "merge_leaderboard", "compare", "gate", "Audit", "Summary", "GapSummary", "ConditionResult", "Comparison", "Change",
           "GateRules", "GateResult", "RuleResult", "FixResult", "LeaderboardResult", "Adapter", "Modality", "BiasAuditError", "__version__"]
