"""`biasaudit report`: the HTML again from an audit.json (ba.Audit.read, then Audit.to_html)."""

from __future__ import annotations

from pathlib import Path

import typer

from biasaudit.cli.app import app
from biasaudit.cli.console import handled, out
from biasaudit.cli.naming import named_as


@app.command()
def report(
    audit: Path = typer.Argument(..., help="audit.json written by biasaudit scan (or before/after.json of a fix run)."),
    html: Path | None = typer.Option(None, "--out", "-o", help="HTML file to write (default: the JSON's name with .html)."),
) -> None:
    """Render the HTML audit again from its JSON, without the model."""
    import biasaudit as ba

    with handled():
        target = html if html is not None else audit.with_suffix(".html")
        with named_as({"path": "--out"}):
            written = ba.Audit.read(audit).to_html(target)
        out.print(str(written))
