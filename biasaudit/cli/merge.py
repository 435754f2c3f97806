"""`biasaudit merge`: the audit of a scan from the part files of its shards (`biasaudit scan --shard I/N`)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import typer

from biasaudit.cli.app import app
from biasaudit.cli.console import err, handled, out, print_verdict, summary_table


@app.command()
def merge(
    parts: list[Path] = typer.Argument(..., help="The part files of one scan, one per shard (scan-part-I-of-N.pt), in any order; "
                                        "or the --out folders of a sharded leaderboard's shards."),
    out_dir: Path = typer.Option(Path("biasaudit-out"), "--out", "-o", help="Directory for audit.json and audit.html (a leaderboard: "
                                 "leaderboard.json, leaderboard.html and every run)."),
) -> None:
    """Merge the parts of a sharded scan (biasaudit scan --shard I/N), or the folders of a sharded leaderboard
    (biasaudit leaderboard --shard I/N), into what one process would have written."""
    from biasaudit.scanning.audit import AUDIT_FILES, write_audit
    from biasaudit.choosing.merging import is_leaderboard_folder
    from biasaudit._core.output_paths import check_output_dir
    from biasaudit._core.output_set import OutputSet
    from biasaudit.scanning.parts import merge_parts

    if parts and all(is_leaderboard_folder(p) for p in parts):
        _merge_leaderboard(parts, out_dir)
        return
    with handled(), ExitStack() as held:
        check_output_dir(out_dir)
        outputs = held.enter_context(OutputSet(out_dir, files=AUDIT_FILES))
        audit = merge_parts(parts)
        json_path, html_path = write_audit(audit, outputs)
        held.close()
        err.print(summary_table(audit))
        print_verdict(audit)
        out.print(f"{json_path}\n{html_path}", markup=False, highlight=False)


def _merge_leaderboard(folders: list[Path], out_dir: Path) -> None:
    from rich.markup import escape

    import biasaudit as ba

    with handled():
        result = ba.merge_leaderboard(folders, out=out_dir)
        err.print(f"[bold]leaderboard[/]: {escape(result.verdict)}")
        for reason in result.reasons:
            err.print(f"  {escape(reason)}")
        out.print(f"{result.json_path}\n{result.html_path}", markup=False, highlight=False)
