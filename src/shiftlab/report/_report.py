"""The ``Report`` base that every capability returns.

A report is a frozen dataclass of results. The base class gives it three faces:

* ``to_dict()``: machine-readable, JSON-safe (what ``--json`` prints);
* ``render()``: a rich console view (headline, key/value fields, tables);
* ``save(directory)``: ``report.json`` plus a self-contained ``report.html`` with figures embedded as PNG,
  both written atomically.

Subclasses override :meth:`Report.headline`, :meth:`Report.tables` and :meth:`Report.figures` where the
defaults (derived from the dataclass fields) are not enough.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from shiftlab.report._io import atomic_write_text, dumps, jsonable

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console


@dataclasses.dataclass(frozen=True)
class Table:
    """A titled table of rows for console and HTML rendering.

    Examples
    --------
    >>> Table("scores", ("arm", "accuracy"), (("plain", 0.61), ("matched", 0.80))).columns
    ('arm', 'accuracy')
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"table {self.title!r}: row {i} has {len(row)} cells, expected {len(self.columns)}"
                )


def format_value(value: Any) -> str:
    """Short human form of a value: 4 significant digits for floats, the rest via ``str``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Report:
    """Base class for results; subclasses are frozen dataclasses.

    Examples
    --------
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Toy(Report):
    ...     kind: ClassVar[str] = "toy"
    ...     value: float
    >>> Toy(1.5).to_dict()
    {'kind': 'toy', 'value': 1.5}
    """

    kind: ClassVar[str] = "report"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary: ``{"kind": ..., <fields>}``."""
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} must be a dataclass or override to_dict()")
        body = {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"kind": self.kind, **body}

    def to_json(self) -> str:
        """``to_dict()`` as indented JSON text."""
        return dumps(self.to_dict())

    def headline(self) -> str:
        """One line saying what the report concludes; defaults to the report kind."""
        return self.kind

    def fields(self) -> Mapping[str, Any]:
        """Scalar key/value pairs shown in the summary table (the scalar dataclass fields by default)."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if key != "kind" and (value is None or isinstance(value, bool | int | float | str)):
                out[key] = value
        return out

    def tables(self) -> Sequence[Table]:
        """Tables shown below the summary."""
        return ()

    def figures(self) -> Mapping[str, Figure]:
        """Named matplotlib figures embedded in the HTML page (built on demand)."""
        return {}

    def render(self, console: Console | None = None) -> None:
        """Print the report to a rich console."""
        from shiftlab.report._console import render_report

        render_report(self, console)

    def to_html(self) -> str:
        """A self-contained HTML page (figures inline as base64 PNG)."""
        from shiftlab.report._html import render_html

        return render_html(self)

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``report.json`` and ``report.html`` into ``directory`` atomically.

        Returns
        -------
        dict
            ``{"json": path, "html": path}``.
        """
        out = Path(directory)
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out} exists and is not a directory; choose an output directory")
        json_path = atomic_write_text(out / "report.json", self.to_json() + "\n")
        html_path = atomic_write_text(out / "report.html", self.to_html())
        return {"json": json_path, "html": html_path}
