"""`biasaudit compare`: two audits, before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from biasaudit.errors import BiasAuditError

from biasaudit.cli.app import app
from biasaudit.cli.console import err, handled, out


@app.command()
def compare(
    before: Path = typer.Argument(..., help="audit.json of the model before the change."),
    after: Path = typer.Argument(..., help="audit.json of the model after the change (same split, conditions and seed)."),
    out_dir: Path = typer.Option(Path("biasaudit-compare"), "--out", "-o", help="Directory for compare.json and compare.html."),
    train_log: Optional[Path] = typer.Option(None, "--train-log", help="train_log.json of a fix run, for the training section."),
) -> None:
    """Re-render the before/after comparison from two audit files, without the model."""
    from biasaudit._core.output_paths import check_output_dir
    from biasaudit.comparing import compare_audits
    from biasaudit._core.output_set import OutputSet
    from biasaudit.report.compare_render import write_compare_html
    from biasaudit.results import read_audit, read_train_log, write_json_atomic

    with handled():
        out_path = check_output_dir(out_dir)
        first, second = read_audit(before), read_audit(after)
        log = read_train_log(train_log) if train_log is not None else None
        try:
            comparison = compare_audits(first, second)
        except BiasAuditError as exc:  # which two files, as the gate says for its baseline
            raise type(exc)(f"{before} vs {after}: {exc}") from exc
        with OutputSet(out_path, files=("compare.json", "compare.html")) as outputs:
            comparison = {"run": outputs.stamp(), **comparison}
            write_json_atomic(comparison, outputs.staged("compare.json"))
            write_compare_html(comparison, first, second, outputs.staged("compare.html"), train_log=log)
            outputs.commit(("compare.html", "compare.json"))
        err.print(escape(comparison["verdict"]))  # one line each, for grep and CI logs
        for sentence in comparison["verdict_sentences"]:
            err.print(f"  {escape(sentence)}")
        out.print(f"{out_path / 'compare.json'}\n{out_path / 'compare.html'}")
