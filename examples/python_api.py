"""scan -> fix -> compare -> gate on the bundled demo, through the Python API only (no files needed, none required).

    python examples/python_api.py [OUT_DIR]

Trains the demo's image+caption model (its captions name the digit's colour, which matches the digit 95% of the time:
a shortcut), audits it, fixes it with BalGrad, compares the two audits and gates the fixed model against the first.
"""

from __future__ import annotations

import sys
from pathlib import Path

import biasaudit as ba
from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline


def main(out: Path | None = None) -> ba.GateResult:
    adapter = DigitsCaptionsAdapter(seed=0)
    model = train_baseline(adapter, seed=0)
    fast = dict(split="ood", bootstrap=200, projection="pca")

    audit = ba.scan(model, adapter, **fast)
    missing = audit.summary.missing
    print(f"full accuracy {audit.summary.accuracy:.1f}%, missing-modality Gap {missing.gap:.1f} points "
          f"(95% CI {missing.gap_ci[0]:.1f} to {missing.gap_ci[1]:.1f}); removing the {missing.dominant} flips the most")
    print(f"accuracy without the caption: {audit.condition('missing:text').accuracy:.1f}%")

    result = ba.fix(model, adapter, method="balgrad", epochs=8, before=audit, **fast)
    comparison = ba.compare(result.before, result.after)  # the same comparison as result.comparison
    print(comparison.verdict)

    # Gate on measures of bias, not on the Gap: a fix that removes a shortcut may widen the Gap (the model now
    # needs the image it used to ignore), and that is no regression.
    rules = ba.GateRules(max_worst_group_drop=1.0, max_bias_follow_increase=1.0, min_accuracy={"full": 30})
    verdict = ba.gate(result.after, baseline=audit, rules=rules)
    for rule in verdict.rules:
        print(f"{rule.status:5} {rule.rule}: {rule.message}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        result.after.to_json(out / "after.json")
        result.after.to_html(out / "after.html")
        comparison.to_json(out / "compare.json")
    return verdict


if __name__ == "__main__":
    outcome = main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
    sys.exit(outcome.exit_code)
