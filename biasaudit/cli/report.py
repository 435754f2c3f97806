"""`biasaudit report`: the HTML again from an audit.json."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from biasaudit.cli.app import app
from biasaudit.cli.console import handled, out


@app.command()
def report(
    audit: Path = typer.Argument(..., help="audit.json written by biasaudit scan (or before/after.json of a fix run)."),
    html: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default: the JSON's name with .html)."),
) -> None:
    """Render the HTML audit again from its JSON, without the model."""
    from biasaudit.gating import check_audit_shape
    from biasaudit._core.output_paths import check_output_file
    from biasaudit.report.render import write_audit_html
    from biasaudit.results import read_audit

    with handled():
        target = check_output_file(html if html is not None else audit.with_suffix(".html"), option="--out")
        data = read_audit(audit)
        check_audit_shape(data, source=str(audit))
        write_audit_html(data, target)
        out.print(str(target))
