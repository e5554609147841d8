"""Real data sets found offline, and the MNIST -> UCI digits two-site shift.

- :func:`load` — ``digits``, ``mnist``, ``mnist-5k``, ``fashion-mnist``, ``cifar10`` as float32
  tensors in [0, 1] with provenance; nothing is ever downloaded.
- :func:`catalog` — every offline data set and pretrained model, whether it is installed here, and
  the exact command that installs it.
- :func:`two_site` — disjoint, seeded, stratified source / target splits of MNIST (site A) and UCI
  optdigits (site B) on a common grid; :func:`harmonize_digits` is its preprocessing.

Importing this package reads no file and imports no optional dependency.

Examples
--------
>>> from shiftlab import data
>>> data.load("digits", "test").images.shape
torch.Size([449, 1, 8, 8])
"""

from __future__ import annotations

from shiftlab.data._catalog import DATASET_NAMES, DatasetInfo, DatasetNotAvailableError, catalog
from shiftlab.data._harmonize import harmonize_digits
from shiftlab.data._loaders import SPLITS, Dataset, Provenance, load
from shiftlab.data._safe_pickle import UnsafePickleError
from shiftlab.data._site_types import SitePair, SiteSizes, SiteSplit, UnlabelledSplit
from shiftlab.data._sites import SUPPORTED_PAIRS, two_site

__all__ = [
    "DATASET_NAMES",
    "SPLITS",
    "SUPPORTED_PAIRS",
    "Dataset",
    "DatasetInfo",
    "DatasetNotAvailableError",
    "Provenance",
    "SitePair",
    "SiteSizes",
    "SiteSplit",
    "UnlabelledSplit",
    "UnsafePickleError",
    "catalog",
    "harmonize_digits",
    "load",
    "two_site",
]
