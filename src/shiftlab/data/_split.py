"""Deterministic, stratified, disjoint partitions of an index set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["stratified_partition"]


def stratified_partition(
    labels: npt.NDArray[np.integer],
    sizes: Sequence[int],
    rng: np.random.Generator,
    *,
    shuffle: bool = True,
) -> list[npt.NDArray[np.int64]]:
    """Draw disjoint parts of the given sizes, each with (nearly) the class proportions of ``labels``.

    Systematic stratified sampling: inside each class c (n_c members) the members are put in random
    order and member k gets the key (k + u_k) / n_c with u_k ~ U(0, 1); sorting all keys interleaves
    the classes evenly, and consecutive chunks of that order are the parts. Any chunk of length m then
    holds m * n_c / n members of class c up to about ±2, whatever the chunk's position.

    Parameters
    ----------
    labels : int array, shape (n,)
        Class of each item.
    sizes : sequence of int
        Size of each part; ``sum(sizes) <= n`` (the caller validates).
    rng : numpy.random.Generator
        The only source of randomness.
    shuffle : bool
        If True each part comes in random order, else in ascending index order.

    Returns
    -------
    list of int64 arrays
        Positions into ``labels``; pairwise disjoint.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.repeat(np.arange(3), [10, 20, 30])
    >>> a, b = stratified_partition(y, [30, 12], np.random.default_rng(0))
    >>> np.bincount(y[a]).tolist(), len(np.intersect1d(a, b))
    ([5, 10, 15], 0)
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if sum(sizes) > n or any(s < 0 for s in sizes):
        raise ValueError(f"cannot draw parts of sizes {list(sizes)} from {n} items")
    keys = np.empty(n, dtype=np.float64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(members.size)]
        keys[members] = (np.arange(members.size) + rng.random(members.size)) / members.size
    order = np.argsort(keys, kind="stable").astype(np.int64)
    parts: list[npt.NDArray[np.int64]] = []
    start = 0
    for size in sizes:
        part = order[start : start + size]
        parts.append(part[rng.permutation(size)] if shuffle else np.sort(part))
        start += size
    return parts
