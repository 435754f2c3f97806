"""Fix methods as components for any PyTorch training loop (methods.md section 8): a loss, a backward, an
after-backward hook, an epoch-end step or a post-hoc refit, on plain tensors and modules, with no Adapter.

    loss            MMDB.loss, GroupDRO.loss, JTT.loss      in place of the cross-entropy
    backward        BalGrad.backward, MMPareto.backward     in place of loss.backward()
    after_backward  OGMGE.after_backward                    between loss.backward() and optimizer.step()
    epoch_end       DandR.epoch_end                         after an epoch
    post hoc        DFR.fit + DFRResult.write_into          on a trained model, no loop
    unimodal logits UnimodalHeads (shared_zero, ogm_split,  each modality's logits alone, for the methods above
                    separate) + branch_widths
    margins         margin_table                            MMDB's margins from the training labels and bias values

No method calls optimizer.step() or zero_grad(), and none draws from the global random generators; each class's
docstring shows the lines of a plain loop it replaces, with AMP and DDP.
"""

from biasaudit.methods.balgrad import BalGrad, BalGradStep
from biasaudit.methods.dandr import DandR
from biasaudit.methods.dfr import DFR, DFRResult
from biasaudit.methods.dfr_data import classifier_inputs, holdout_indices
from biasaudit.methods.group_dro import GroupDRO, group_ids
from biasaudit.methods.heads import UnimodalHeads, branch_widths
from biasaudit.methods.jtt import JTT
from biasaudit.methods.mmdb import MMDB, MarginTable, margin_table
from biasaudit.methods.mmpareto import MMPareto
from biasaudit.methods.ogm_ge import OGMGE

__all__ = [
    "DFR",
    "JTT",
    "MMDB",
    "OGMGE",
    "BalGrad",
    "BalGradStep",
    "DFRResult",
    "DandR",
    "GroupDRO",
    "MMPareto",
    "MarginTable",
    "UnimodalHeads",
    "branch_widths",
    "classifier_inputs",
    "group_ids",
    "holdout_indices",
    "margin_table",
]
