"""Rich console rendering of a :class:`~shiftlab.report.Report`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from shiftlab.report._report import format_value

if TYPE_CHECKING:
    from shiftlab.report._report import Report


def render_report(report: Report, console: Console | None = None) -> None:
    """Print headline, scalar fields and tables of ``report``."""
    console = console or Console()
    console.rule(f"[bold]{escape(report.headline())}")
    fields = report.fields()
    if fields:
        summary = RichTable(show_header=False, box=None, pad_edge=False)
        summary.add_column(style="bold cyan")
        summary.add_column()
        for key, value in fields.items():
            summary.add_row(escape(key), escape(format_value(value)))
        console.print(summary)
    for table in report.tables():
        rich_table = RichTable(title=table.title, title_justify="left")
        for column in table.columns:
            rich_table.add_column(column)
        for row in table.rows:
            rich_table.add_row(*(escape(format_value(cell)) for cell in row))
        console.print(rich_table)
