"""biasaudit: find, measure and fix modality bias in multimodal PyTorch classifiers."""

from biasaudit.adapter import Adapter, Modality
from biasaudit.api import compare, fix, gate, scan
from biasaudit.errors import BiasAuditError
from biasaudit.gating import GateRules
from biasaudit.results.audit import Audit, ConditionResult, GapSummary, Summary
from biasaudit.results.comparison import Change, Comparison
from biasaudit.results.fix_result import FixResult
from biasaudit.results.gate_result import GateResult, RuleResult

__version__ = "0.1.0"
__all__ = ["scan", "fix", "compare", "gate", "Audit", "Summary", "GapSummary", "ConditionResult", "Comparison", "Change",
           "GateRules", "GateResult", "RuleResult", "FixResult", "Adapter", "Modality", "BiasAuditError", "__version__"]
