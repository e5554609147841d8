"""What :func:`~shiftlab.data.two_site` returns: its split sizes, labelled and unlabelled splits, and
the site pair that holds them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from shiftlab.data._loaders import Provenance

__all__ = ["SitePair", "SiteSizes", "SiteSplit", "UnlabelledSplit"]


@dataclass(frozen=True)
class SiteSizes:
    """How many images each split of :func:`two_site` gets.

    Defaults: 10,000 source training and 2,000 source validation images (from MNIST train and valid);
    the 1,797 UCI digits are split into a 600-image unlabelled estimation pool, a 200-image labelled
    target validation set and the remaining 997 as the deploy holdout. With ``"mnist-5k"`` as source
    the source defaults are 4,000 / 1,000 (the subset has 5,000 images).

    Examples
    --------
    >>> SiteSizes(source_train=2000).source_train
    2000
    >>> SiteSizes(target_pool=0)
    Traceback (most recent call last):
    ...
    ValueError: SiteSizes.target_pool must be an int >= 1, got 0
    """

    source_train: int = 10_000
    source_val: int = 2_000
    target_pool: int = 600
    target_val: int = 200
    target_holdout: int = 997

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"SiteSizes.{field.name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True, eq=False)
class SiteSplit:
    """A labelled split of one site.

    Attributes
    ----------
    x : torch.Tensor
        float32 (n, 1, r, r), preprocessed as described in :attr:`SitePair.preprocessing`.
    y : torch.Tensor
        int64 (n,) labels.
    indices : torch.Tensor
        int64 (n,): position of each image in ``shiftlab.data.load(dataset, "all")``.
    dataset : str
        Catalogue name of the site's data set.
    """

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    dataset: str

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True, eq=False)
class UnlabelledSplit:
    """An unlabelled split (the target estimation pool): images and their provenance only.

    Attributes
    ----------
    x : torch.Tensor
        float32 (n, 1, r, r).
    indices : torch.Tensor
        int64 (n,): position of each image in ``shiftlab.data.load(dataset, "all")``.
    dataset : str
        Catalogue name of the site's data set.
    """

    x: torch.Tensor
    indices: torch.Tensor
    dataset: str

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True, eq=False)
class SitePair:
    """Source and target splits of a two-site, same-label shift on a common grid.

    The five splits are pairwise disjoint (no image appears in two of them) and depend only on
    ``seed``.

    Attributes
    ----------
    source_train, source_val : SiteSplit
        Labelled source images (for MNIST: drawn from its train and valid splits respectively; the
        official test split is never used).
    target_pool : UnlabelledSplit
        Target images for label-free estimation (e.g. of a deploy nuisance covariance).
    target_pool_labels : torch.Tensor
        int64 labels of ``target_pool``, kept apart so that a label-free method cannot use them by
        accident; for "labelled" ablations and oracle checks only.
    target_val : SiteSplit
        Small labelled target set (model selection, calibration).
    target_holdout : SiteSplit
        Deploy holdout: report target accuracy here, and touch it only for that.
    class_names : tuple of str
        Label names shared by both sites.
    source, target : str
        Catalogue names of the two data sets.
    resolution : int
        Side of every image.
    seed : int
        Seed the splits were drawn with.
    preprocessing : str
        What was done to each site's images, in words.
    provenance : dict of str to Provenance
        ``"source"`` and ``"target"``: where the raw images came from (split ``"all"``).
    """

    source_train: SiteSplit
    source_val: SiteSplit
    target_pool: UnlabelledSplit
    target_pool_labels: torch.Tensor
    target_val: SiteSplit
    target_holdout: SiteSplit
    class_names: tuple[str, ...]
    source: str
    target: str
    resolution: int
    seed: int
    preprocessing: str
    provenance: dict[str, Provenance]

    def index_sets(self) -> dict[str, tuple[str, torch.Tensor]]:
        """Split name -> (data set, indices into ``load(data set, "all")``) for all five splits."""
        return {
            "source_train": (self.source, self.source_train.indices),
            "source_val": (self.source, self.source_val.indices),
            "target_pool": (self.target, self.target_pool.indices),
            "target_val": (self.target, self.target_val.indices),
            "target_holdout": (self.target, self.target_holdout.indices),
        }

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(idx)}" for k, (_, idx) in self.index_sets().items())
        return (
            f"SitePair({self.source!r} -> {self.target!r}, resolution={self.resolution}, "
            f"seed={self.seed}, {sizes})"
        )
