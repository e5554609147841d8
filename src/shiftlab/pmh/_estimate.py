"""``NuisanceEstimate``: the deploy nuisance covariance Σ_task as a low-rank factor plus an isotropic floor.

Σ = F Fᵀ + σ² I with F = U_r diag(√λ_1..√λ_r) ∈ R^{d×r} (the top-r eigenpairs) and σ² ≥ 0 the floor.
The **untruncated** spectrum is kept beside the factor so that the eigengap at any rank is computed on
the full spectrum, never on the truncated one (where a check could not fail).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from shiftlab.functional import Eigengap, as_tensor, eigengap
from shiftlab.report import atomic_write_bytes, atomic_write_text

FORMAT_VERSION = 1
_ARRAYS = ("factor", "spectrum", "signal")


@dataclasses.dataclass(frozen=True)
class NuisanceEstimate:
    r"""Σ_task = F Fᵀ + floor · I at a perturbation site.

    Attributes
    ----------
    factor
        (d, r) float tensor, columns :math:`\sqrt{\lambda_i} u_i` for the top-r eigenpairs (r may be 0 for a
        purely isotropic Σ).
    floor
        Isotropic variance σ² ≥ 0 added in every direction.
    spectrum
        The untruncated eigenvalues of the estimated second moment, descending (length ≤ d; values past the
        number of samples are exactly zero and may be omitted).
    site
        ``"input"`` or the name of the layer whose output is perturbed.
    shape
        Shape of one sample at the site (e.g. ``(1, 8, 8)``); d is its product.
    estimator
        The estimator that produced this (``"subspace"``, ``"isotropic"``, ...).
    counts
        Data counts that went into the estimate (e.g. ``{"n_source": 600, "n_target": 600}``).
    signal
        Optional (d, k) orthonormal basis of the class-mean-difference (signal) directions at the site,
        used by the ``"signal"`` falsification control.
    """

    factor: torch.Tensor
    floor: float
    spectrum: torch.Tensor
    site: str
    shape: tuple[int, ...]
    estimator: str
    counts: Mapping[str, int]
    signal: torch.Tensor | None = None

    def __post_init__(self) -> None:
        d = math.prod(self.shape)
        if self.factor.ndim != 2 or self.factor.shape[0] != d:
            raise ValueError(f"factor must have shape (d={d}, r); got {tuple(self.factor.shape)}")
        if not bool(torch.isfinite(self.factor).all()):
            raise ValueError("factor contains non-finite values")
        if not (math.isfinite(self.floor) and self.floor >= 0):
            raise ValueError(f"floor must be a finite variance >= 0; got {self.floor}")
        if self.spectrum.ndim != 1 or self.spectrum.numel() > d:
            raise ValueError(
                f"spectrum must be 1-D with at most d={d} values; got {tuple(self.spectrum.shape)}"
            )
        if self.factor.shape[1] > self.spectrum.numel():
            raise ValueError("the factor has more columns than the spectrum has eigenvalues")
        if self.signal is not None and (self.signal.ndim != 2 or self.signal.shape[0] != d):
            raise ValueError(f"signal must have shape (d={d}, k); got {tuple(self.signal.shape)}")
        if self.factor.shape[1] == 0 and self.floor == 0:
            raise ValueError("an estimate needs a non-empty factor or a positive floor (Σ would be zero)")

    @property
    def dim(self) -> int:
        """d, the dimension of the space Σ lives in."""
        return math.prod(self.shape)

    @property
    def rank(self) -> int:
        """r, the number of low-rank directions."""
        return int(self.factor.shape[1])

    @property
    def trace(self) -> float:
        """tr Σ = ‖F‖_F² + d σ²."""
        return float(self.factor.double().pow(2).sum()) + self.dim * self.floor

    def basis(self) -> torch.Tensor:
        """(d, r) orthonormal basis of the factor's range (its left singular vectors)."""
        if self.rank == 0:
            return self.factor.new_zeros(self.dim, 0)
        u, _, _ = torch.linalg.svd(self.factor, full_matrices=False)
        return u

    def covariance(self) -> torch.Tensor:
        """Dense (d, d) Σ = F Fᵀ + σ² I (for small d; prefer the factor otherwise)."""
        eye = torch.eye(self.dim, dtype=self.factor.dtype, device=self.factor.device)
        return self.factor @ self.factor.T + self.floor * eye

    def eigengap(self, rank: int | None = None) -> Eigengap:
        """Gap between λ_rank and λ_{rank+1} on the **untruncated** spectrum (default: the factor's rank).

        Raises ``ValueError`` when ``rank`` is not in ``1 .. len(spectrum) - 1``.
        """
        return eigengap(self.spectrum, self.rank if rank is None else rank)

    def truncate(self, rank: int) -> NuisanceEstimate:
        """Keep the top ``rank`` columns of the factor (floor, spectrum and metadata unchanged)."""
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= self.rank:
            raise ValueError(f"rank must be an int in 1..{self.rank}; got {rank!r}")
        return dataclasses.replace(self, factor=self.factor[:, :rank].clone())

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> NuisanceEstimate:
        """A copy with tensors moved to ``device`` (and ``dtype``)."""
        signal = None if self.signal is None else self.signal.to(device, dtype)
        return dataclasses.replace(
            self,
            factor=self.factor.to(device, dtype),
            spectrum=self.spectrum.to(device, dtype),
            signal=signal,
        )

    def save(self, directory: str | Path) -> Path:
        """Write ``nuisance.json`` and one ``.npy`` per array into ``directory`` (atomic, no pickle)."""
        out = Path(directory)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "floor": self.floor,
            "site": self.site,
            "shape": list(self.shape),
            "estimator": self.estimator,
            "counts": dict(self.counts),
            "rank": self.rank,
            "dim": self.dim,
            "trace": self.trace,
        }
        for name in _ARRAYS:
            array = getattr(self, name)
            if array is None:
                continue
            buffer = _npy_bytes(array.detach().cpu().numpy())
            atomic_write_bytes(out / f"{name}.npy", buffer)
            meta[f"{name}_file"] = f"{name}.npy"
        atomic_write_text(out / "nuisance.json", json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | Path) -> NuisanceEstimate:
        """Read an estimate written by :meth:`save` (``np.load(allow_pickle=False)``)."""
        src = Path(directory)
        meta_path = src / "nuisance.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found; save an estimate there with NuisanceEstimate.save"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"unsupported nuisance format {meta.get('format_version')!r}; expected {FORMAT_VERSION}"
            )
        arrays: dict[str, torch.Tensor | None] = {}
        for name in _ARRAYS:
            file = meta.get(f"{name}_file")
            arrays[name] = None if file is None else torch.from_numpy(np.load(src / file, allow_pickle=False))
        factor, spectrum = arrays["factor"], arrays["spectrum"]
        if factor is None or spectrum is None:
            raise ValueError(f"{src} lacks factor.npy or spectrum.npy")
        return cls(
            factor=factor,
            floor=float(meta["floor"]),
            spectrum=spectrum,
            site=str(meta["site"]),
            shape=tuple(int(s) for s in meta["shape"]),
            estimator=str(meta["estimator"]),
            counts={str(k): int(v) for k, v in meta["counts"].items()},
            signal=arrays["signal"],
        )


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def choose_rank(spectrum: torch.Tensor, energy: float = 0.95, max_rank: int = 64) -> int:
    """Smallest r whose top eigenvalues hold ``energy`` of the trace, capped at ``max_rank`` and len - 1."""
    total = float(spectrum.sum())
    if total <= 0:
        raise ValueError("the estimated second moment is zero: source and target do not differ at this site")
    cumulative = torch.cumsum(spectrum.double(), 0) / total
    r = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64)).item()) + 1
    return max(1, min(r, max_rank, spectrum.numel() - 1 if spectrum.numel() > 1 else 1))


def from_second_moment_samples(
    deltas: torch.Tensor,
    *,
    site: str,
    shape: tuple[int, ...],
    estimator: str,
    counts: Mapping[str, int],
    rank: int | None = None,
    floor: float | Literal["residual"] = 0.0,
    weights: torch.Tensor | None = None,
    signal: torch.Tensor | None = None,
) -> NuisanceEstimate:
    r"""Build an estimate from displacement samples δ_i (rows of ``deltas``), **uncentred**.

    .. math:: \hat\Sigma = \sum_i w_i \, \delta_i \delta_i^\top, \qquad \sum_i w_i = 1

    (uniform weights by default). The mean displacement is part of the nuisance (a deploy shift moves
    inputs on average), so the second moment is not centred. Computed through the thin SVD of
    :math:`\operatorname{diag}(\sqrt{w})\,\delta`, which gives the untruncated non-zero spectrum without
    forming a d×d matrix.

    ``floor="residual"`` spreads the discarded tail mass over all d directions,
    σ² = Σ_{i>r} λ_i / d, so that tr Σ equals the trace of the full estimate.
    """
    x = as_tensor(deltas, name="deltas", ndim=2, min_rows=1)
    d = math.prod(shape)
    if x.shape[1] != d:
        raise ValueError(f"deltas have {x.shape[1]} features but the site shape {shape} has d={d}")
    if weights is None:
        w = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64, device=x.device)
    else:
        w = as_tensor(weights, name="weights", ndim=1).to(torch.float64)
        if w.numel() != x.shape[0] or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("weights must be non-negative, one per delta row, with a positive sum")
        w = w / w.sum()
    scaled = x.double() * w.sqrt().unsqueeze(1)
    _, s, vh = torch.linalg.svd(scaled, full_matrices=False)
    spectrum = s.pow(2)
    if float(spectrum.sum()) <= 0:
        raise ValueError(
            f"all {x.shape[0]} displacements are zero: there is no nuisance to estimate at {site!r}"
        )
    r = choose_rank(spectrum) if rank is None else rank
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r < max(d, 2):
        raise ValueError(f"rank must be an int with 1 <= rank < d={d}; got {rank!r}")
    if r > spectrum.numel():
        raise ValueError(
            f"rank={r} exceeds the {spectrum.numel()} eigenvalues available from {x.shape[0]} samples"
        )
    factor = vh[:r].T * s[:r].unsqueeze(0)
    if floor == "residual":
        floor_value = float(spectrum[r:].sum()) / d
    elif (
        isinstance(floor, int | float) and not isinstance(floor, bool) and math.isfinite(floor) and floor >= 0
    ):
        floor_value = float(floor)
    else:
        raise ValueError(f"floor must be 'residual' or a finite float >= 0; got {floor!r}")
    dtype = x.dtype
    return NuisanceEstimate(
        factor=factor.to(dtype),
        floor=floor_value,
        spectrum=spectrum.to(dtype),
        site=site,
        shape=tuple(shape),
        estimator=estimator,
        counts=dict(counts),
        signal=None if signal is None else signal.to(dtype),
    )
