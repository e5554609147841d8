"""Import time of ``shiftlab`` beyond torch (target < 1 s): fresh interpreters, median of repeats.

Run: ``.venv/bin/python benchmarks/import_time.py``. Prints the anchor (``import torch``), the
package-level import and the import of every subpackage, each minus the anchor.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

REPEATS = 5


def _time(statement: str) -> float:
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    baseline = _time("pass")
    anchor = _time("import torch")
    print(f"interpreter start: {baseline:.3f} s; import torch: {anchor - baseline:.3f} s (anchor)")
    for target in (
        "shiftlab",
        "shiftlab.functional",
        "shiftlab.data",
        "shiftlab.report",
        "shiftlab.cli",
        "shiftlab.generative",
    ):
        total = _time(f"import torch, {target}")
        extra = total - anchor
        ratio = extra / (anchor - baseline)
        print(f"import {target:<22} beyond torch: {extra:.3f} s  (ratio to the torch import {ratio:.2f})")


if __name__ == "__main__":
    main()
