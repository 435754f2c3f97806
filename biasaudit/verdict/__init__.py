"""The verdicts of scan and compare in words, bias measures first (methods.md section 9).

Why this order: flip rates and the Gap measure *reliance*, not bias. A model can need the image (muting
it flips most predictions) while its shortcut runs through the caption, and a de-biased model that uses
the more informative modality better has a *larger* Gap. So a verdict leads with what measures bias
(the carrier's excess bias-follow rate, worst-group and bias-balanced accuracy, OOD accuracy, JSD),
then gives reliance (dominant modality, Gap read against the unimodal ceilings) as context, then the
caveats. Every sentence quotes the number it rests on, with its interval where the audit has one.
Any section may be absent (audits written before it existed) or `{"available": false, "note": ...}`.
"""

from biasaudit.verdict.compare import compare_sentences, compare_verdict
from biasaudit.verdict.scan import scan_verdict
from biasaudit.verdict.words import change, ci_pct, ci_points, interval, number, pct, pts

__all__ = [
    "change",
    "ci_pct",
    "ci_points",
    "compare_sentences",
    "compare_verdict",
    "interval",
    "number",
    "pct",
    "pts",
    "scan_verdict",
]
