"""Reports: figures (matplotlib, pure) and rendering (jinja2) of audit dicts into self-contained HTML."""

from biasaudit.report.render import render_audit_html, write_audit_html

__all__ = ["render_audit_html", "write_audit_html"]
