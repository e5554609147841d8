"""The runs table: one row per training run, numeric and categorical columns, read from CSV or a mapping."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RunsTable", "as_runs_table", "read_runs_csv"]


def _column(name: str, values: Any) -> npt.NDArray[Any]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"column {name!r} must be 1-D; got shape {arr.shape}")
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.number):
        if np.iscomplexobj(arr):
            raise TypeError(f"column {name!r} is complex; runs tables hold real numbers or labels")
        return arr.astype(np.float64)
    cells = [str(v).strip() for v in arr.tolist()]
    if cells and all(_is_float(c) for c in cells):
        return np.asarray([float(c) for c in cells], dtype=np.float64)
    return np.asarray(cells, dtype=object)


@dataclass(frozen=True, eq=False)
class RunsTable:
    """Columns of equal length, one row per run: float64 arrays (numeric) or object arrays of str (labels).

    Examples
    --------
    >>> runs = RunsTable.from_mapping({"val_loss": [0.5, 0.4, 0.6], "arch": ["mlp", "bn", "ln"]})
    >>> runs.n, runs.is_numeric("val_loss"), runs.is_numeric("arch")
    (3, True, False)
    """

    columns: Mapping[str, npt.NDArray[Any]]

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError("a runs table needs at least one column")
        lengths = {name: len(col) for name, col in self.columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all columns must have the same number of rows; got {lengths}")

    @classmethod
    def from_mapping(cls, data: Any) -> RunsTable:
        """Build from a mapping of column name to values, or a data frame (anything with ``.columns``)."""
        if isinstance(data, RunsTable):
            return data
        if hasattr(data, "columns") and not isinstance(data, Mapping):
            items = [(str(c), np.asarray(data[c])) for c in data.columns]
        elif isinstance(data, Mapping):
            items = [(str(k), v) for k, v in data.items()]
        else:
            raise TypeError(f"runs must be a mapping of columns or a data frame; got {type(data).__name__}")
        return cls({name: _column(name, values) for name, values in items})

    @property
    def n(self) -> int:
        """Number of runs (rows)."""
        return len(next(iter(self.columns.values())))

    @property
    def names(self) -> tuple[str, ...]:
        """Column names in order."""
        return tuple(self.columns)

    def _get(self, name: str) -> npt.NDArray[Any]:
        if name not in self.columns:
            raise ValueError(f"unknown column {name!r}; the runs table has: {', '.join(self.names)}")
        return self.columns[name]

    def is_numeric(self, name: str) -> bool:
        """Whether column ``name`` holds numbers (else labels)."""
        return bool(self._get(name).dtype == np.float64)

    def numeric(self, name: str) -> npt.NDArray[np.float64]:
        """Column ``name`` as float64; raises if it holds labels."""
        col = self._get(name)
        if col.dtype != np.float64:
            bad = [v for v in col if not _is_float(v)][:3]
            raise ValueError(f"column {name!r} must be numeric; it holds labels such as {bad}")
        return col.astype(np.float64)

    def labels(self, name: str) -> npt.NDArray[Any]:
        """Column ``name`` as an object array of str (numbers are formatted)."""
        col = self._get(name)
        if col.dtype == np.float64:
            return np.asarray([format(v, "g") for v in col], dtype=object)
        return col

    def subset(self, mask: npt.NDArray[np.bool_]) -> RunsTable:
        """The rows where ``mask`` is true."""
        return RunsTable({name: col[mask] for name, col in self.columns.items()})


def _is_float(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def read_runs_csv(path: str | Path) -> RunsTable:
    """Read a runs table from CSV with a header row.

    A column is numeric when every non-empty cell parses as a float (empty cells become NaN, which the
    audit rejects only if the column is used); otherwise it holds labels.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "runs.csv"
    >>> _ = p.write_text("seed,arch,acc\\n0,mlp,0.9\\n1,bn,0.8\\n")
    >>> runs = read_runs_csv(p)
    >>> runs.names, runs.numeric("acc").tolist()
    (('seed', 'arch', 'acc'), [0.9, 0.8])
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"runs file {file} does not exist")
    with file.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(
                f"runs file {file} is empty; it needs a header row and one row per run"
            ) from None
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    if len(set(header)) != len(header):
        raise ValueError(f"runs file {file} has duplicate column names: {header}")
    for i, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(f"{file}, line {i}: {len(row)} cells, expected {len(header)}")
    columns: dict[str, npt.NDArray[Any]] = {}
    for j, name in enumerate(header):
        cells = [row[j].strip() for row in rows]
        if all(c == "" or _is_float(c) for c in cells):
            columns[name] = np.asarray([float(c) if c else math.nan for c in cells], dtype=np.float64)
        else:
            columns[name] = np.asarray(cells, dtype=object)
    return RunsTable(columns)


def as_runs_table(runs: RunsTable | Mapping[str, Sequence[Any]] | str | Path | Any) -> RunsTable:
    """A :class:`RunsTable` from a table, a mapping of columns, a data frame, or a CSV path.

    Examples
    --------
    >>> as_runs_table({"a": [1, 2]}).n
    2
    """
    if isinstance(runs, str | Path):
        return read_runs_csv(runs)
    return RunsTable.from_mapping(runs)
