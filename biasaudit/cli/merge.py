"""`biasaudit merge`: the audit of a scan from the part files of its shards (`biasaudit scan --shard I/N`, ba.merge), or
the leaderboard from the folders of its shards (`biasaudit leaderboard --shard I/N`, ba.merge_leaderboard)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from biasaudit.cli.app import app
from biasaudit.cli.console import err, handled, out, print_verdict, summary_table
from biasaudit.cli.naming import named_as

FLAGS = {"out": "--out", "parts": "PARTS", "folders": "PARTS"}


@app.command()
def merge(
    parts: list[Path] = typer.Argument(
        ...,
        help="The part files of one scan, one per shard (scan-part-I-of-N.pt), in any order; "
        "or the --out folders of a sharded leaderboard's shards.",
    ),
    out_dir: Path = typer.Option(
        Path("biasaudit-out"),
        "--out",
        "-o",
        help="Directory for audit.json and audit.html (a leaderboard: leaderboard.json, leaderboard.html and every run).",
    ),
) -> None:
    """Merge the parts of a sharded scan (biasaudit scan --shard I/N), or the folders of a sharded leaderboard
    (biasaudit leaderboard --shard I/N), into what one process would have written."""
    import biasaudit as ba

    with handled(), named_as(FLAGS):
        if parts and all(p.is_dir() for p in parts):  # scan parts are files; a leaderboard shard writes a folder
            board = ba.merge_leaderboard(parts, out=out_dir)
            err.print(f"[bold]leaderboard[/]: {escape(board.verdict)}")
            for reason in board.reasons:
                err.print(f"  {escape(reason)}")
            out.print(f"{board.json_path}\n{board.html_path}", markup=False, highlight=False)
            return
        audit = ba.merge(parts, out=out_dir)
        err.print(summary_table(audit.to_dict()))
        print_verdict(audit.to_dict())
        out.print(f"{out_dir / 'audit.json'}\n{out_dir / 'audit.html'}", markup=False, highlight=False)
