"""Validated inputs of the audit: numeric and label columns, the baseline design, resampling, controls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from shiftlab.audit._engine import MIN_CLUSTERS, Resampling, check_clusters

__all__ = [
    "MIN_RUNS",
    "Baseline",
    "as_labels",
    "as_numeric",
    "build_design",
    "parse_resampling",
    "sanity_columns",
]

#: Fewest runs the audit accepts (in every cell).
MIN_RUNS = 5


@dataclass(frozen=True)
class Baseline:
    """One control: float64 values (numeric) or an object array of str (categorical, one-hot encoded)."""

    name: str
    values: npt.NDArray[Any]

    @property
    def numeric(self) -> bool:
        return bool(self.values.dtype == np.float64)


def as_labels(values: Any, name: str, n: int) -> npt.NDArray[Any]:
    """One str label per run."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have one label per run ({n}); got shape {arr.shape}")
    return np.asarray([str(v) for v in arr.tolist()], dtype=object)


def as_numeric(values: Any, name: str) -> npt.NDArray[np.float64]:
    """Finite float64 values (tensors are moved to the CPU)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    arr = np.asarray(values)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must hold numbers; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} non-finite value(s) (NaN or inf)")
    return arr


def build_design(
    baselines: Sequence[Baseline], rows: npt.NDArray[np.bool_]
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Numeric baselines as columns, categorical ones as 0/1 dummies (first level dropped).

    Baselines that are constant on ``rows`` (a group's own label, a fixed hyperparameter) cannot control
    for anything there: they are left out and returned as ``dropped``, next to the ``used`` ones.
    """
    columns: list[npt.NDArray[np.float64]] = []
    used: list[str] = []
    dropped: list[str] = []
    for b in baselines:
        v = b.values[rows]
        if b.numeric:
            if np.all(v == v[0]):
                dropped.append(b.name)
                continue
            columns.append(v.astype(np.float64))
        else:
            levels = sorted(set(v.tolist()))
            if len(levels) < 2:
                dropped.append(b.name)
                continue
            columns.extend((v == level).astype(np.float64) for level in levels[1:])
        used.append(b.name)
    n = int(rows.sum())
    matrix = np.column_stack(columns) if columns else np.zeros((n, 0))
    return torch.as_tensor(matrix, dtype=torch.float64), used, dropped


def parse_resampling(units: Any, block_size: int | None, n: int) -> Resampling:
    """Independent runs, clusters of runs (``units``), or contiguous blocks of a per-step series."""
    if units is not None and block_size is not None:
        raise ValueError("give either units (clustered runs) or block_size (a per-step series), not both")
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive int; got {block_size!r}")
        if -(-n // block_size) < MIN_CLUSTERS:
            raise ValueError(
                f"block_size={block_size} leaves fewer than {MIN_CLUSTERS} blocks for n={n}; use "
                f"block_size <= {n // MIN_CLUSTERS}"
            )
        return Resampling(block_size=block_size)
    if units is None:
        return Resampling()
    _, codes = np.unique(as_labels(units, "units", n), return_inverse=True)
    tensor = torch.as_tensor(codes.astype(np.int64))
    check_clusters(tensor, "units")
    return Resampling(units=tensor)


def sanity_columns(
    x: npt.NDArray[np.float64], metric_name: str, baselines: Sequence[Baseline], seed: int
) -> tuple[npt.NDArray[np.float64], list[str]]:
    """The sanity controls: a random metric, the first metric permuted, the first numeric baseline."""
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    columns = [torch.randn(n, generator=gen, dtype=torch.float64).numpy()]
    names = ["random metric"]
    columns.append(x[torch.randperm(n, generator=gen).numpy(), 0])
    names.append(f"permuted {metric_name}")
    numeric = [b for b in baselines if b.numeric]
    if numeric:
        columns.append(numeric[0].values.astype(np.float64))
        names.append(f"baseline {numeric[0].name}")
    return np.column_stack(columns), names
