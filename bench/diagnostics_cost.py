"""What do the bias diagnostics of issue 9 cost? (target: the default scan with them at most 1.5x the forwards
of the scan without them.)

Scans the demo's cross-entropy model on its ood split, in one process, with the condition grid alone
(`missing,noisy,ratio`), with the default (grid + carrier test + ceilings; groups and calibration ride on the
grid's forwards), and with every diagnostic (`default,shapley,interaction`). Prints, as ratios to the grid
alone, the model forwards per sample (from the manifest) and the wall time of the whole scan (best of
--repeats, after a warm-up scan, so the first-call costs of torch and numba are not counted).

    python bench/diagnostics_cost.py
"""

from __future__ import annotations

import argparse
import time

from biasaudit.scanning.audit import audit_model
from biasaudit.datasets.demo_model import DigitsCaptionsAdapter, train_baseline
from biasaudit.scanning.config import ScanConfig

SPECS = {"grid only": "missing,noisy,ratio", "default": "default", "everything": "default,shapley,interaction"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    adapter = DigitsCaptionsAdapter(seed=0)
    model = train_baseline(adapter, seed=0)

    def run(spec: str) -> tuple[float, dict]:
        config = ScanConfig(split="ood", conditions=spec, projection="pca", min_wrong=10, bootstrap_replicates=args.bootstrap)
        start = time.perf_counter()
        audit = audit_model(model, adapter, config=config, checkpoint=None)
        return time.perf_counter() - start, audit["manifest"]["forwards_per_sample"]

    run(SPECS["everything"])  # warm-up
    results = {}
    for name, spec in SPECS.items():
        times, cost = [], None
        for _ in range(args.repeats):
            seconds, cost = run(spec)
            times.append(seconds)
        results[name] = (min(times), cost)
    base_time, base_cost = results["grid only"]
    print(f"{'scan':<12} {'forwards/sample':>16} {'ratio':>6} {'wall s':>8} {'ratio':>6}   forwards by stage")
    for name, (seconds, cost) in results.items():
        stages = ", ".join(f"{k} {v:.2f}" for k, v in cost.items() if k != "total" and v)
        print(f"{name:<12} {cost['total']:>16.2f} {cost['total'] / base_cost['total']:>6.2f} {seconds:>8.2f} {seconds / base_time:>6.2f}   {stages}")


if __name__ == "__main__":
    main()
