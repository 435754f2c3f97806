"""`biasaudit merge`: the audit of a scan from the part files of its shards (`biasaudit scan --shard I/N`)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import typer

from biasaudit.cli.app import app
from biasaudit.cli.console import err, handled, out, print_verdict, summary_table


@app.command()
def merge(
    parts: list[Path] = typer.Argument(..., help="The part files of one scan, one per shard (scan-part-I-of-N.pt), in any order."),
    out_dir: Path = typer.Option(Path("biasaudit-out"), "--out", "-o", help="Directory for audit.json and audit.html."),
) -> None:
    """Merge the parts of a sharded scan (biasaudit scan --shard I/N) into the audit one process would have written."""
    from biasaudit.audit import AUDIT_FILES, write_audit
    from biasaudit.output_paths import check_output_dir
    from biasaudit.output_set import OutputSet
    from biasaudit.shard_parts import merge_parts

    with handled(), ExitStack() as held:
        check_output_dir(out_dir)
        outputs = held.enter_context(OutputSet(out_dir, files=AUDIT_FILES))
        audit = merge_parts(parts)
        json_path, html_path = write_audit(audit, outputs)
        held.close()
        err.print(summary_table(audit))
        print_verdict(audit)
        out.print(f"{json_path}\n{html_path}", markup=False, highlight=False)
