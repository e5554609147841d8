"""Self-contained HTML rendering: no external assets, figures inline as base64 PNG."""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

from shiftlab.report._io import dumps
from shiftlab.report._report import format_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from shiftlab.report._report import Report

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}figure{margin:1.5em 0}img{max-width:100%}
pre{background:#f7f7f7;padding:1em;overflow:auto}
"""


def figure_to_png(figure: Figure, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes without touching pyplot's global state."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _table_html(title: str, columns: tuple[str, ...], rows: tuple[tuple[object, ...], ...]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_value(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def render_html(report: Report) -> str:
    """The full page: headline, fields, tables, figures and the raw JSON."""
    parts = [f"<h1>{html.escape(report.headline())}</h1>"]
    fields = report.fields()
    if fields:
        rows = tuple((key, value) for key, value in fields.items())
        parts.append(_table_html("Summary", ("field", "value"), rows))
    for table in report.tables():
        parts.append(_table_html(table.title, table.columns, table.rows))
    for name, figure in report.figures().items():
        encoded = base64.b64encode(figure_to_png(figure)).decode("ascii")
        parts.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
        )
    parts.append(
        f"<details><summary>JSON</summary><pre>{html.escape(dumps(report.to_dict()))}</pre></details>"
    )
    title = html.escape(report.headline())
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
