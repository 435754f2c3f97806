"""`biasaudit demo`: the whole story offline on the bundled data (ba.demo)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from biasaudit.cli.app import app
from biasaudit.cli.console import err, handled, out, print_verdict, progress_bars, summary_table
from biasaudit.cli.naming import named_as


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("biasaudit-demo"), "--out", "-o", help="Directory for the demo checkpoint and audit."),
    seed: int = typer.Option(0, help="Seed of the demo data split, training and scan."),
    split: str = typer.Option(
        "ood", help="Split to audit: ood (colour independent of the digit) or test (same bias as training)."
    ),
) -> None:
    """Train the bundled digits-captions model with plain cross-entropy, then audit it. Offline, about a minute."""
    import biasaudit as ba

    with handled():
        start = time.perf_counter()
        with progress_bars() as progress, named_as({"out": "--out", "seed": "--seed", "split": "--split"}):
            audit = ba.demo(out=out_dir, seed=seed, split=split, progress=progress)
        document = audit.to_dict()
        err.print(summary_table(document))
        print_verdict(document)
        err.print(
            f"demo finished in {time.perf_counter() - start:.1f} s: checkpoint, audit.json and audit.html are in {out_dir}/"
        )
        out.print(f"{out_dir / 'model.pt'}\n{out_dir / 'audit.json'}\n{out_dir / 'audit.html'}")
