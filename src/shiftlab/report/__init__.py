"""Reports: the one result type every capability returns (JSON, rich console, self-contained HTML)."""

from shiftlab.report._html import figure_to_png
from shiftlab.report._io import atomic_write_bytes, atomic_write_text, jsonable
from shiftlab.report._report import Report, Table, format_value

__all__ = [
    "Report",
    "Table",
    "atomic_write_bytes",
    "atomic_write_text",
    "figure_to_png",
    "format_value",
    "jsonable",
]
