"""`biasaudit leaderboard`: every method against the control over seeds, and the one to use (or none)."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import typer
from rich.markup import escape

from biasaudit.cli.app import app
from biasaudit.cli.choices import Precision, plain
from biasaudit.cli.console import ADAPTER_HELP, err, handled, out, progress_bars
from biasaudit.cli.naming import named_as
from biasaudit.cli.torchrun import meet_after_runs, torchrun_place
from biasaudit.errors import InputError
from biasaudit.cli.tracker_options import Experiment, Log, RunName, TrackingUri, logged, tracking

DEFAULT_METHODS = "ce,mmdb,balgrad,ogm_ge,mmpareto,groupdro,jtt,dandr,dfr"


def parse_grids(given: list[str]) -> dict[str, tuple[float, ...]]:
    """--grid METHOD=V1,V2 (repeated) -> {method: values}; a malformed one is named in one sentence (ba.leaderboard
    checks the methods and values)."""

    grids: dict[str, tuple[float, ...]] = {}
    for text in given:
        method, _, values = text.partition("=")
        method = method.strip()
        try:
            numbers = tuple(float(v) for v in values.split(",")) if values.strip() else ()
        except ValueError:
            numbers = ()
        if not method or not numbers:
            raise InputError(f"--grid {text!r} is not METHOD=V1,V2,... (e.g. --grid ogm_ge=0.1,0.3,0.8).")
        if method in grids:
            raise InputError(f"--grid names {method} twice; give each method's grid once.")
        grids[method] = numbers
    return grids


FLAGS = {"model": "CHECKPOINT", "out": "--out", "grids": "--grid", "shard": "--shard", "trust_checkpoint": "--trust-checkpoint"}


@app.command()
def leaderboard(
    checkpoint: Path = typer.Argument(..., help="State dict of the model to fix; it is never modified."),
    adapter: str = typer.Option(..., "--adapter", "-a", help=ADAPTER_HELP, rich_help_panel="Model and data"),
    methods: str = typer.Option(
        DEFAULT_METHODS,
        "--methods",
        help="Methods to compare, comma-separated; ce, the control, is always included.",
        rich_help_panel="Comparison",
    ),
    seeds: list[int] = typer.Option(
        [0, 1, 2],
        "--seeds",
        help="Training seeds (give --seeds once per seed, at least two; 3 or more are better).",
        rich_help_panel="Comparison",
    ),
    split: str = typer.Option(
        "test", help="Evaluated split (never val, where options are chosen).", rich_help_panel="Comparison"
    ),
    primary: str = typer.Option(
        "worst-group",
        "--primary",
        help="The bias measure that breaks ties: worst-group, bias-balanced, ood or follow-rate.",
        rich_help_panel="Comparison",
    ),
    max_full_drop: float = typer.Option(
        1.0,
        "--max-full-drop",
        help="Non-inferiority margin: points of Full accuracy a recommended "
        "method may lose at most (the lower end of its interval).",
        rich_help_panel="Comparison",
    ),
    keep: str = typer.Option(
        "best",
        "--keep",
        help="Fixed checkpoints kept: all, best (per method, by the primary measure) or none.",
        rich_help_panel="Comparison",
    ),
    out_dir: Path = typer.Option(
        Path("biasaudit-leaderboard"),
        "--out",
        "-o",
        help="Directory for leaderboard.json, leaderboard.html "
        "and the runs; rerun the same command to finish a killed leaderboard.",
        rich_help_panel="Model and data",
    ),
    epochs: int = typer.Option(20, help="Training epochs of every run.", rich_help_panel="Training"),
    lr: float = typer.Option(3e-3, help="Learning rate.", rich_help_panel="Training"),
    batch_size: int = typer.Option(64, help="Training batch size.", rich_help_panel="Training"),
    optimizer: str = typer.Option("adam", help="adam, adamw or sgd.", rich_help_panel="Training"),
    precision: Precision = typer.Option(
        "fp32",
        "--precision",
        help="fp32, or bf16 / fp16 autocast of every run's training and audits (CUDA only; fp16 with a grad scaler).",
        rich_help_panel="Training",
    ),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", min=10, help="Bootstrap replicates of every audit.", rich_help_panel="Comparison"
    ),
    device: str = typer.Option("cpu", help="Torch device.", rich_help_panel="Model and data"),
    jobs: int = typer.Option(
        1,
        "--jobs",
        help="Runs trained at once in parallel processes: at most one per CPU core, or one per GPU "
        "with --device cuda (process k on GPU k).",
        rich_help_panel="Model and data",
    ),
    grid: list[str] = typer.Option(
        [],
        "--grid",
        help="A method's grid for the option chosen on val, as METHOD=V1,V2,... (repeat per "
        "method; one value fixes it). Defaults: mmdb scale 1,2,4,8,16,32; ogm_ge alpha 0.1,0.3,0.8; "
        "mmpareto gamma 1,1.5,2; groupdro eta 0.001,0.01,0.1; jtt upweight 5,10,20.",
        rich_help_panel="Comparison",
    ),
    shard_spec: str | None = typer.Option(
        None,
        "--shard",
        help="I/N: train only every N-th (method, seed) run from the I-th "
        "(I counts from 0), for a job array; then `biasaudit merge DIR...` of every shard's --out "
        "writes the leaderboard.",
        rich_help_panel="Comparison",
    ),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help="Allow full pickles.", rich_help_panel="Model and data"
    ),
    log: Log = None,
    experiment: Experiment = None,
    run_name: RunName = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Fix the model with every method over several seeds, compare each with the ce control, and recommend one only when it
    helps beyond training noise without costing Full accuracy."""
    import biasaudit as ba

    def told(method: str, seed: int, reused: bool) -> None:
        err.print(f"{escape(method)} seed {seed}: {'finished earlier, reused' if reused else 'done'}", markup=False)

    refused = "--shard trains only some runs of a leaderboard" if shard_spec is not None else None
    rank, world = torchrun_place()
    with (
        handled(lambda: f"finished runs in {out_dir}/runs are kept: the same command continues with the missing ones"),
        tracking(log, experiment, run_name, tracking_uri, refused=refused) if rank == 0 else nullcontext(None) as tracker,
    ):
        if world > 1:
            # Under torchrun each process trains its share of the runs alone (as a job array's task would), on its own
            # GPU with --device cuda, into the same --out; then the processes meet and rank 0 writes the leaderboard.
            if shard_spec is not None:
                raise InputError(
                    "--shard splits a leaderboard's runs for a job array; under torchrun the processes "
                    "already split them. Give one or the other."
                )
            shard_spec = f"{rank}/{world}"
            if device == "cuda":
                device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
        named = [m.strip() for m in methods.split(",") if m.strip()]
        with progress_bars() if rank == 0 else nullcontext(None) as progress, named_as(FLAGS):
            board = ba.leaderboard(
                checkpoint,
                adapter,
                out=out_dir,
                methods=named,
                seeds=seeds,
                split=split,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                optimizer=optimizer,
                precision=plain(precision),
                bootstrap=bootstrap,
                primary=primary,
                max_full_drop=max_full_drop,
                keep=keep,
                device=device,
                jobs=jobs,
                grids=parse_grids(grid),
                shard=shard_spec,
                progress=progress,
                on_run=told,
                trust_checkpoint=trust_checkpoint,
            )
        if world > 1:
            meet_after_runs()  # every process's runs are finished when this returns
            if rank != 0:
                return
            board = ba.merge_leaderboard([out_dir], out=out_dir)
        elif shard_spec is not None:
            err.print(f"{board.verdict} ({out_dir})", markup=False)
            out.print(str(board.json_path), markup=False)
            return
        err.print(f"[bold]leaderboard[/]: {escape(board.verdict)}")
        for reason in board.reasons:
            err.print(f"  {escape(reason)}")
        out.print(f"{board.json_path}\n{board.html_path}")
        later = "run the same command again to log it (it reuses the finished runs)"
        logged(tracker, board, later=later)  # leaderboard.json and leaderboard.html as artifacts
