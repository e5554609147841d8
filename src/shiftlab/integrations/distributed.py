r"""Multi-process PMH: nuisance estimates from all-reduced sufficient statistics, and process launching.

Every rank passes its own shard of the data; the estimate is the one the single process would compute
on all the rows (to round-off, in float64 accumulators)::

    # torchrun --nproc-per-node 2 script.py
    import torch.distributed as dist
    from shiftlab.integrations.distributed import estimate_nuisance_distributed
    from shiftlab.pmh import PMHTrainer

    dist.init_process_group("gloo")                 # "nccl" on GPUs
    sigma = estimate_nuisance_distributed(
        "domain", source=my_xs, source_labels=my_ys, target=my_xt, target_labels=my_yt, rank=8
    )
    trainer = PMHTrainer(model)                     # data-parallel under torchrun, see PMHTrainer
    result = trainer.fit((x, y), estimate=sigma)    # same (x, y) on every rank: each takes its rows

How: each rank computes sums over its rows (:func:`nuisance_statistics`: counts, :math:`\sum x`,
:math:`\sum x x^\top`, per class where the estimator is class-aligned), one ``all_reduce`` adds them
(:func:`all_reduce_statistics`), and every rank turns the totals into the same estimate
(:func:`estimate_from_statistics`, which ends in the single-process estimators' own last step).
Covered: ``subspace`` (D1), ``isotropic`` from repeats (D2), ``augmentation`` (D3), ``domain`` (D4,
labelled, pseudo-labelled and moments), ``compositional`` (D5), ``temporal`` (D6), ``style`` and
``adversarial`` (D7; each rank attacks its rows with its own, identical copy of the model).
The class-aligned statistics hold :math:`2 K d^2` doubles (K classes): at the input of 28×28 images
with 10 classes, 98 MB per rank.

NVLink multicast is kept off in every process :func:`launch` starts (:data:`SAFE_ENV`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shiftlab.pmh._estimate import NuisanceEstimate
from shiftlab.pmh._estimators_stats import Moments, NuisanceStatistics
from shiftlab.pmh._estimators_stats_final import STATISTICS_KINDS, estimate_from_statistics
from shiftlab.pmh._estimators_stats_local import nuisance_statistics
from shiftlab.pmh._train_dist import DataParallel

__all__ = [
    "SAFE_ENV",
    "STATISTICS_KINDS",
    "Moments",
    "NuisanceStatistics",
    "all_reduce_statistics",
    "check_collectives",
    "estimate_from_statistics",
    "estimate_nuisance_distributed",
    "launch",
    "nuisance_statistics",
    "process_group",
]

#: Environment of every process :func:`launch` starts: NVLink multicast (NVLS) off in NCCL, PyTorch's
#: symmetric memory and NVSHMEM.
SAFE_ENV: dict[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def _require_group() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "torch.distributed is not initialised: call torch.distributed.init_process_group (torchrun "
            "sets its environment) or use shiftlab.integrations.distributed.process_group(...)"
        )


def _communicator(group: Any) -> DataParallel:
    """Collectives on this backend's device: this rank's GPU for NCCL (``LOCAL_RANK``), else the CPU."""
    _require_group()
    device = torch.device("cuda") if dist.get_backend(group) == "nccl" else torch.device("cpu")
    return DataParallel(group, device)


def all_reduce_statistics(stats: NuisanceStatistics, *, group: Any = None) -> NuisanceStatistics:
    r"""Sum sufficient statistics over the ranks of ``group`` (default: the default process group).

    .. math:: n_g = \sum_r n_g^{(r)}, \quad \sum x = \sum_r \sum_{x \in r} x, \quad
              \sum x x^\top = \sum_r \sum_{x \in r} x x^\top

    for every group g (class) of every named moment, and the row counts. The ranks first agree on what
    they hold (estimator, site, shape, options such as ``rank``/``floor``, fixed integers such as
    ``n_repeats``); a mismatch raises ``ValueError`` on every rank, naming the fields. Groups are padded
    to the largest class id any rank saw, then everything travels in one float64 ``all_reduce``
    (counts are exact below :math:`2^{53}`). A collective: every rank must call it.

    Parameters
    ----------
    stats
        This rank's statistics (:func:`nuisance_statistics`).
    group
        A ``torch.distributed`` process group; ``None`` for the default one.

    Returns
    -------
    NuisanceStatistics
        The totals, identical on every rank (on the CPU).

    Examples
    --------
    >>> import torch
    >>> x = torch.arange(12.0, dtype=torch.float64).reshape(2, 3, 2)
    >>> with process_group("gloo", rank=0, world_size=1):
    ...     total = all_reduce_statistics(nuisance_statistics("temporal", sequences=x))
    >>> total.counts, total.moments["deltas"].total.tolist()
    ({'n_sequences': 2}, [[8.0, 8.0]])
    """
    if not isinstance(stats, NuisanceStatistics):
        raise TypeError(f"stats must be NuisanceStatistics; got {type(stats).__name__}")
    comm = _communicator(group)
    signature = stats.signature()
    comm.agree(signature, "the sufficient statistics (same estimator and options on every rank)")
    names = sorted(stats.moments)
    sizes = torch.tensor([stats.moments[n].groups for n in names], dtype=torch.long, device=comm.comm)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX, group=group)
    padded = {n: stats.moments[n].padded(int(g)) for n, g in zip(names, sizes.tolist(), strict=True)}
    count_names = sorted(stats.counts)
    parts = []
    for n in names:
        m = padded[n]
        parts += [m.count, m.total.reshape(-1)] + ([] if m.outer is None else [m.outer.reshape(-1)])
    parts.append(torch.tensor([float(stats.counts[k]) for k in count_names], dtype=torch.float64))
    flat = torch.cat(parts).to(comm.comm)
    dist.all_reduce(flat, group=group)
    flat = flat.cpu()
    offset = 0

    def take(shape: tuple[int, ...]) -> torch.Tensor:
        nonlocal offset
        size = int(torch.Size(shape).numel())
        piece = flat[offset : offset + size].reshape(shape)
        offset += size
        return piece

    moments = {}
    for n in names:
        m = padded[n]
        g, d = m.total.shape
        count, total = take((g,)), take((g, d))
        outer = None if m.outer is None else take((g, d, d))
        moments[n] = Moments(count, total, outer)
    counts = {k: round(float(v)) for k, v in zip(count_names, take((len(count_names),)), strict=True)}
    return NuisanceStatistics(
        kind=stats.kind,
        site=stats.site,
        shape=stats.shape,
        moments=moments,
        counts=counts,
        fixed=stats.fixed,
        options=stats.options,
        dtype=stats.dtype,
    )


def estimate_nuisance_distributed(kind: str, *, group: Any = None, **kwargs: Any) -> NuisanceEstimate:
    r"""``estimate_nuisance(kind, **kwargs)`` on the union of every rank's rows, from all-reduced sums.

    Each rank passes its own shard with the keywords of :func:`shiftlab.pmh.estimate_nuisance`;

    .. math:: \hat\Sigma = F\big(\textstyle\sum_r S^{(r)}\big)

    with :math:`S^{(r)}` the sufficient statistics of rank r's rows (:func:`nuisance_statistics`) and F
    the estimator's formula on the totals (:func:`estimate_from_statistics`), so the result equals the
    single-process estimate on all the rows to round-off (float64 accumulators), on every rank. A
    shard's bad input (NaN, wrong shape, unknown keyword, ...) raises on its rank and a ``ValueError``
    on the others instead of leaving them waiting; checks on the whole data (two source classes, shared
    classes, rows per class) run on the totals. Each rank needs at least one row; repeats of an item
    (``isotropic``) and sequences (``temporal``) must not be split between ranks. Random augmentations
    (``augmentation``) draw with ``seed + rank`` on each rank (independent draws): the estimate then
    matches the single-process one in distribution, and exactly for deterministic augmentations.

    Parameters
    ----------
    kind
        One of :data:`STATISTICS_KINDS`.
    group
        Process group (``None``: the default group).
    **kwargs
        The estimator's keywords, with this rank's rows.

    Returns
    -------
    NuisanceEstimate
        The same estimate on every rank.

    Examples
    --------
    >>> import torch
    >>> from shiftlab.pmh import style
    >>> g = torch.Generator().manual_seed(0)
    >>> content = torch.randn(200, 4, generator=g, dtype=torch.float64)
    >>> styled = content + 0.5 * torch.randn(200, 1, generator=g, dtype=torch.float64) * torch.eye(4)[1]
    >>> with process_group("gloo", rank=0, world_size=1):
    ...     est = estimate_nuisance_distributed("style", content=content, styled=styled, rank=1)
    >>> torch.allclose(est.covariance(), style(content, styled, rank=1).covariance(), atol=1e-12)
    True
    """
    comm = _communicator(group)
    error: Exception | None = None
    local = None
    try:
        call = dict(kwargs)
        if kind == "augmentation":
            seed = call.get("seed", 0)
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"seed must be an int >= 0; got {seed!r}")
            call["seed"] = seed + comm.rank
        local = nuisance_statistics(kind, **call)
    except (ValueError, TypeError) as err:
        error = err
    comm.raise_together(error)
    assert local is not None
    return estimate_from_statistics(all_reduce_statistics(local, group=group))


@contextlib.contextmanager
def process_group(
    backend: str = "gloo",
    *,
    init_method: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> Iterator[Any]:
    """Initialise the default process group for the block, and destroy it afterwards.

    Parameters
    ----------
    backend
        ``"gloo"`` (CPU) or ``"nccl"`` (GPUs).
    init_method
        Rendezvous URL shared by all ranks (``"tcp://127.0.0.1:PORT"``, ``"file:///path"``). Default:
        ``"env://"`` (``torchrun``'s ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``), or a
        fresh file for a single process (``world_size=1``).
    rank, world_size
        This process's rank and the number of processes (default: from the environment).

    Yields
    ------
    ProcessGroup
        The default group.

    Examples
    --------
    >>> import torch.distributed as dist
    >>> with process_group("gloo", rank=0, world_size=1):
    ...     dist.get_world_size()
    1
    >>> dist.is_initialized()
    False
    """
    if dist.is_initialized():
        raise ValueError("a default process group is already initialised; use it (group=None) instead")
    with tempfile.TemporaryDirectory() as scratch:
        if init_method is None:
            if world_size is not None and world_size > 1:
                raise ValueError(
                    "pass an init_method shared by every rank (tcp://HOST:PORT or file:///PATH) when "
                    "world_size > 1, or launch with torchrun"
                )
            init_method = "env://" if world_size is None else Path(scratch, "rendezvous").as_uri()
        extra: dict[str, Any] = {}
        if rank is not None:
            extra["rank"] = rank
        if world_size is not None:
            extra["world_size"] = world_size
        dist.init_process_group(backend, init_method=init_method, **extra)
        try:
            yield dist.group.WORLD
        finally:
            dist.destroy_process_group()


def _child(
    rank: int, fn: Callable[..., Any], world: int, init: str, backend: str, args: tuple[Any, ...]
) -> None:
    os.environ.update(SAFE_ENV)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    if backend == "nccl":
        torch.cuda.set_device(rank)
    with process_group(backend, init_method=init, rank=rank, world_size=world):
        fn(rank, world, *args)


def launch(fn: Callable[..., Any], nprocs: int, *args: Any, backend: str = "gloo") -> None:
    """Run ``fn(rank, world_size, *args)`` in ``nprocs`` new processes joined in one process group.

    Each process gets :data:`SAFE_ENV` (NVLink multicast off), ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``
    like ``torchrun``, its own GPU (``cuda:rank``) with ``backend="nccl"``, and a default process group
    through a file rendezvous in a temporary directory (no port to pick). Processes start with
    ``torch.multiprocessing.spawn``: ``fn`` and ``args`` must be picklable (``fn`` defined at module
    level). Returns when every process has finished; an exception in any of them is raised here.

    Parameters
    ----------
    fn
        ``fn(rank, world_size, *args)``.
    nprocs
        Number of processes (>= 1).
    *args
        Extra arguments of ``fn``.
    backend
        ``"gloo"`` or ``"nccl"``.

    Examples
    --------
    >>> launch(check_collectives, 2)
    """
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs must be an int >= 1; got {nprocs!r}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl'; got {backend!r}")
    if backend == "nccl" and torch.cuda.device_count() < nprocs:
        raise ValueError(f"backend='nccl' needs {nprocs} GPUs; {torch.cuda.device_count()} visible")
    with tempfile.TemporaryDirectory() as scratch:
        init = Path(scratch, "rendezvous").as_uri()
        mp.spawn(_child, args=(fn, nprocs, init, backend, args), nprocs=nprocs, join=True)


def check_collectives(rank: int, world_size: int) -> None:
    """Smoke test of a process group: an all-reduce of ``rank + 1`` must give ``W (W + 1) / 2``.

    Raises ``RuntimeError`` when it does not (a broken backend or rendezvous).

    Examples
    --------
    >>> with process_group("gloo", rank=0, world_size=1):
    ...     check_collectives(0, 1)
    """
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    value = torch.tensor([float(rank + 1)], dtype=torch.float64, device=device)
    dist.all_reduce(value)
    expected = world_size * (world_size + 1) / 2
    if float(value) != expected:
        raise RuntimeError(f"all_reduce gave {float(value)} on rank {rank}; expected {expected}")
