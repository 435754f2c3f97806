"""`biasaudit compare`: two audits, before and after (ba.compare)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import typer
from rich.markup import escape

from biasaudit.cli.app import app
from biasaudit.cli.console import err, handled, out
from biasaudit.cli.naming import named_as
from biasaudit.cli.tracker_options import Experiment, Log, RunName, TrackingUri, logged, tracking, wanted
from biasaudit.errors import BiasAuditError

FLAGS = {"out": "--out", "train_log": "--train-log"}


@app.command()
def compare(
    before: Path = typer.Argument(..., help="audit.json of the model before the change."),
    after: Path = typer.Argument(..., help="audit.json of the model after the change (same split, conditions and seed)."),
    out_dir: Path = typer.Option(Path("biasaudit-compare"), "--out", "-o", help="Directory for compare.json and compare.html."),
    train_log: Path | None = typer.Option(None, "--train-log", help="train_log.json of a fix run, for the training section."),
    log: Log = None,
    experiment: Experiment = None,
    run_name: RunName = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Re-render the before/after comparison from two audit files, without the model."""
    import biasaudit as ba
    from biasaudit.api._documents import _compare_out_problem

    with handled(), ExitStack() as held:
        first, second = ba.Audit.read(before), ba.Audit.read(after)
        if wanted(log):
            # Everything the comparison can refuse (audits of other splits or conditions, the training log), before
            # the tracker's store is touched (MLflow's default creates ./mlflow.db): compared once without files,
            # which costs no model, then again into --out once the tracker is open.
            with which_files(before, after):
                _compare_out_problem(out_dir)
                ba.compare(first, second, train_log=train_log)
        # After every check, before the files: a tracker that cannot be used exits 2 with nothing written.
        tracker = held.enter_context(tracking(log, experiment, run_name, tracking_uri))
        with which_files(before, after):
            comparison = ba.compare(first, second, out=out_dir, train_log=train_log)
        err.print(escape(comparison.verdict))  # one line each, for grep and CI logs
        for sentence in comparison.sentences:
            err.print(f"  {escape(sentence)}")
        out.print(f"{out_dir / 'compare.json'}\n{out_dir / 'compare.html'}")
        later = f"log it with ba.log(ba.compare(ba.Audit.read({str(before)!r}), ba.Audit.read({str(after)!r})), to={{to}})"
        logged(tracker, comparison, [out_dir / "compare.json", out_dir / "compare.html"], later=later)


@contextmanager
def which_files(before: Path, after: Path) -> Iterator[None]:
    """A comparison's error naming its flag, or else the two files it compared (as the gate names its baseline)."""
    try:
        with named_as(FLAGS):
            yield
    except BiasAuditError as exc:
        if str(exc).startswith(tuple(FLAGS.values())):
            raise
        raise type(exc)(f"{before} vs {after}: {exc}") from exc
