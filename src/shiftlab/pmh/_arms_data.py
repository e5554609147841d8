"""``ArmsData``: the five splits :func:`run_arms` needs, with a leakage check and split hashes.

The deploy holdout is only ever used to report results. Rows that estimate Σ (or train a reference arm,
or select λ) must not be holdout rows: with provenance indices (a :class:`~shiftlab.data.SitePair`) the
check compares index sets of the same data set; with raw tensors it compares SHA-256 hashes of the rows'
bytes. Any overlap raises before training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import torch

from shiftlab.pmh._train_data import Pair, check_xy

__all__ = ["ArmsData", "row_hashes", "tensor_hash"]


def tensor_hash(*tensors: torch.Tensor) -> str:
    """SHA-256 (hex) of the tensors' dtypes, shapes and bytes, in order.

    Examples
    --------
    >>> tensor_hash(torch.arange(3)) == tensor_hash(torch.arange(3)), tensor_hash(torch.arange(3))[:8]
    (True, '11dbfb02')
    """
    digest = hashlib.sha256()
    for t in tensors:
        c = t.detach().cpu().contiguous()
        digest.update(f"{c.dtype}:{tuple(c.shape)};".encode())
        digest.update(c.numpy().tobytes() if c.numel() else b"")
    return digest.hexdigest()


def row_hashes(x: torch.Tensor) -> set[str]:
    """SHA-256 of each row's bytes (float rows compared as float32, so dtype casts do not hide a copy)."""
    flat = x.detach().cpu().reshape(x.shape[0], -1).to(torch.float32).contiguous().numpy()
    return {hashlib.sha256(row.tobytes()).hexdigest() for row in flat}


@dataclasses.dataclass(frozen=True, eq=False)
class ArmsData:
    """Source and target splits for :func:`run_arms`.

    Attributes
    ----------
    source_train, source_val
        Labelled source ``(x, y)``.
    target_pool
        Target rows Σ may be estimated from (and reference arms may train on).
    target_holdout
        Labelled deploy holdout ``(x, y)``: reported on, never selected or trained on.
    target_pool_labels
        Labels of ``target_pool`` (``None``: unlabelled).
    target_val
        Small labelled target selection split ``(x, y)``, or ``None``.
    indices
        Optional provenance: split name → (data set name, int64 indices into that data set). When given
        for ``target_pool``, ``target_val`` and ``target_holdout``, disjointness is checked on indices.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> xy = lambda n: (torch.randn(n, 3, generator=g), torch.arange(n) % 2)
    >>> data = ArmsData(xy(20), xy(10), torch.randn(8, 3, generator=g), xy(12))
    >>> sorted(data.split_hashes())[:2]
    ['source_train', 'source_val']
    """

    source_train: Pair
    source_val: Pair
    target_pool: torch.Tensor
    target_holdout: Pair
    target_pool_labels: torch.Tensor | None = None
    target_val: Pair | None = None
    indices: Mapping[str, tuple[str, torch.Tensor]] | None = None

    def __post_init__(self) -> None:
        xs, _ = check_xy(self.source_train, "source_train")
        check_xy(self.source_val, "source_val")
        xh, _ = check_xy(self.target_holdout, "target_holdout")
        if self.target_val is not None:
            check_xy(self.target_val, "target_val")
        pool = self.target_pool
        if not isinstance(pool, torch.Tensor) or pool.ndim < 2 or pool.shape[0] == 0:
            raise ValueError("target_pool must be a non-empty tensor of shape (n, ...)")
        if not pool.is_floating_point() or not bool(torch.isfinite(pool).all()):
            raise ValueError("target_pool must be floating point and finite")
        if self.target_pool_labels is not None:
            check_xy((pool, self.target_pool_labels), "target_pool")
        splits = {"source_val": self.source_val[0], "target_pool": pool, "target_holdout": xh}
        if self.target_val is not None:
            splits["target_val"] = self.target_val[0]
        for name, x in splits.items():
            if x.shape[1:] != xs.shape[1:]:
                raise ValueError(
                    f"{name} rows have shape {tuple(x.shape[1:])}, source_train rows {tuple(xs.shape[1:])}"
                )

    @classmethod
    def from_site_pair(cls, pair: Any) -> ArmsData:
        """The splits of a :class:`~shiftlab.data.SitePair` (with its provenance indices)."""
        for name in ("source_train", "source_val", "target_pool", "target_val", "target_holdout"):
            if not hasattr(pair, name):
                raise TypeError(f"expected a SitePair (or ArmsData); {type(pair).__name__} has no {name!r}")
        return cls(
            source_train=(pair.source_train.x, pair.source_train.y),
            source_val=(pair.source_val.x, pair.source_val.y),
            target_pool=pair.target_pool.x,
            target_holdout=(pair.target_holdout.x, pair.target_holdout.y),
            target_pool_labels=pair.target_pool_labels,
            target_val=(pair.target_val.x, pair.target_val.y),
            indices=dict(pair.index_sets()),
        )

    def _indexed(self, name: str) -> tuple[str, torch.Tensor] | None:
        return None if self.indices is None else self.indices.get(name)

    def check_disjoint(self, name: str, rows: torch.Tensor | None = None) -> str:
        """Raise ``ValueError`` if split ``name`` (or explicit ``rows``) shares a row with the holdout.

        Returns how it was checked (``"indices"`` or ``"row hashes"``).
        """
        mine, holdout = self._indexed(name), self._indexed("target_holdout")
        if rows is None and mine is not None and holdout is not None:
            if mine[0] != holdout[0]:
                return "indices"
            shared = set(mine[1].tolist()) & set(holdout[1].tolist())
            if shared:
                raise ValueError(
                    f"leakage: {len(shared)} row(s) of {name} are deploy-holdout rows (indices "
                    f"{sorted(shared)[:5]}...); the holdout must stay disjoint from every row used before it"
                )
            return "indices"
        x = rows if rows is not None else self._rows(name)
        shared_rows = row_hashes(x) & row_hashes(self.target_holdout[0])
        if shared_rows:
            raise ValueError(
                f"leakage: {len(shared_rows)} row(s) of {name} equal deploy-holdout rows (by content hash); "
                "the holdout must stay disjoint from every row used before it"
            )
        return "row hashes"

    def _rows(self, name: str) -> torch.Tensor:
        if name == "target_pool":
            return self.target_pool
        split = getattr(self, name)
        if split is None:
            raise ValueError(f"split {name!r} is absent")
        return split[0]

    def split_hashes(self) -> dict[str, str]:
        """SHA-256 per split: of the provenance indices when known, else of the rows (and labels)."""
        out: dict[str, str] = {}
        for name in ("source_train", "source_val", "target_pool", "target_val", "target_holdout"):
            indexed = self._indexed(name)
            if indexed is not None:
                out[name] = tensor_hash(indexed[1].to(torch.int64))
                continue
            if name == "target_pool":
                labels = () if self.target_pool_labels is None else (self.target_pool_labels,)
                out[name] = tensor_hash(self.target_pool, *labels)
                continue
            split = getattr(self, name)
            if split is not None:
                out[name] = tensor_hash(*split)
        return out
