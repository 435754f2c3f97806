"""The README's "Choosing a method" figures: the demo's leaderboard, its table and its Pareto plot, and how long it took.

Runs the README's commands (`biasaudit demo`, then `biasaudit leaderboard` of the demo's model on the ood split with
the defaults: every method, seeds 0-2, 20 epochs, 1000 bootstrap replicates), timed, then prints the table as
README markdown (mean ± std over seeds, then the pooled change against ce with its 95% interval; Full on test, the
rest on ood) and writes the Pareto plot the page shows as a PNG. With --from DIR it reads a leaderboard folder that
already holds leaderboard.json instead of running one.

    python bench/leaderboard_demo.py [--out /tmp/biasaudit-leaderboard-demo] [--jobs 2] [--png docs/leaderboard-demo.png]
    python bench/leaderboard_demo.py --from /tmp/biasaudit-leaderboard-demo/lb
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from biasaudit.report.leaderboard_render import pareto_figure, primary_measure
from biasaudit.verdict.words import interval, number

COLUMNS = ("full", "worst_group", "bias_balanced", "ood", "follow_rate", "gap")


def run(out: Path, jobs: int) -> tuple[Path, float]:
    script = Path(sys.executable).parent / "biasaudit"
    subprocess.run([str(script), "demo", "--out", str(out / "demo")], check=True, stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    subprocess.run([str(script), "leaderboard", str(out / "demo" / "model.pt"), "--adapter", "biasaudit.datasets.demo_model:DigitsCaptionsAdapter",
                    "--split", "ood", "--jobs", str(jobs), "--out", str(out / "lb")], check=True, stdout=subprocess.DEVNULL)
    return out / "lb", time.perf_counter() - started


def cell(entry: dict, name: str) -> str:
    value = entry["values"].get(name) or {}
    if value.get("mean") is None:
        return "n/a"
    text = number(value["mean"]) + (f" ± {number(value['std'])}" if value.get("std") is not None else "")
    change = (entry.get("changes") or {}).get(name)
    if change and change.get("delta") is not None:
        bounds = interval(change.get("interval"))
        text += f" ({number(change['delta'], signed=True)}" + (f" {bounds}" if bounds else "") + ")"
    return text


def table(document: dict) -> str:
    labels = {m["name"]: m["label"] for m in document["measures"]}
    names = [name for name in COLUMNS if name in labels]
    lines = ["| method | " + " | ".join(labels[n] for n in names) + " | option chosen on val (seeds) | recommended |",
             "|---" * (len(names) + 3) + "|"]
    for entry in document["methods"]:
        options = entry.get("options")
        chosen = f"{options['option']} {', '.join(f'{v:g}' for v in options['chosen'].values())}" if options else ""
        name = f"`{entry['method']}`" + (" (control)" if entry["control"] else "")
        lines.append(f"| {name} | " + " | ".join(cell(entry, n) for n in names)
                     + f" | {chosen} | {'**yes**' if entry['recommended'] else ''} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "biasaudit-leaderboard-demo")
    parser.add_argument("--from", dest="source", type=Path, default=None, help="a leaderboard folder to read instead of running")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--png", type=Path, default=None, help="where to write the Pareto plot (e.g. docs/leaderboard-demo.png)")
    args = parser.parse_args()
    folder, seconds = (args.source, None) if args.source is not None else run(args.out, args.jobs)
    document = json.loads((folder / "leaderboard.json").read_text(encoding="utf-8"))
    print(table(document))
    print()
    print(document["verdict"])
    runs = sum(len(m["seeds"]) for m in document["methods"])
    took = f"{seconds:.0f} s wall clock" if seconds is not None else "not timed here"
    print(f"\n{runs} fixes; leaderboard.json's wall time {document['manifest']['wall_time_s']:.0f} s; this run: {took}; "
          f"{os.cpu_count()} CPU cores.")
    if args.png is not None:
        fig, _ = pareto_figure(document, primary_measure(document))
        fig.savefig(args.png, dpi=110)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
