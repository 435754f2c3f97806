"""Before/after comparison of two audits of the same split, conditions and seed.

audits.py   compare_audits: the audits must match; deltas per condition and summary figure (reliance: Avg, Gap),
            the bias measures and the verdict.
bias.py     the bias measures before and after (methods.md section 9) and why one does not compare.
pairing.py  whether the audits pair up replicate by replicate (pair_replicates) and the per-replicate figures a
            paired interval is taken over.
"""

from __future__ import annotations

from biasaudit.comparing.audits import GROUPS, compare_audits
from biasaudit.comparing.bias import compare_bias
from biasaudit.comparing.pairing import Pairing, derived_replicates, generator_of, group_replicates, pair_replicates

__all__ = [
    "GROUPS",
    "Pairing",
    "compare_audits",
    "compare_bias",
    "derived_replicates",
    "generator_of",
    "group_replicates",
    "pair_replicates",
]
