"""biasaudit: find, measure and fix modality bias in multimodal PyTorch classifiers."""

from biasaudit.adapter import Adapter, Modality
from biasaudit.errors import BiasAuditError

__version__ = "0.1.0"
__all__ = ["Adapter", "Modality", "BiasAuditError", "__version__"]
