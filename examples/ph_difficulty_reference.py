"""Reference difficulties for `shiftlab ph train` (phase 1): validation H0 after one epoch, per data set.

    python examples/ph_difficulty_reference.py [--seeds 0 1 2] [--datasets digits mnist fashion-mnist]

Runs PHTrainer.difficulty() (MLP, Adam at lr 1e-3, one epoch, 15 % stratified validation) for each data
set and seed, and prints the rows of ``shiftlab/topology/_reference.py``: mean and sample standard
deviation over seeds of the H0 total persistence and of the validation accuracy. Data sets that are
not installed are skipped with the install command.
"""

from __future__ import annotations

import argparse
import statistics

from shiftlab.data import DatasetNotAvailableError
from shiftlab.topology import PHTrainConfig, PHTrainer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist-5k", "mnist", "fashion-mnist"])
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets:
        h0s, accs = [], []
        try:
            for seed in args.seeds:
                h0, acc = PHTrainer(PHTrainConfig(dataset=dataset, seed=seed, device="cpu")).difficulty()
                h0s.append(h0)
                accs.append(acc)
                print(f"{dataset:>14} seed {seed}: H0 {h0:.4f}, validation accuracy {acc:.4f}")
        except DatasetNotAvailableError as err:
            print(f"{dataset}: skipped ({err})")
            continue
        rows.append(
            {
                "dataset": dataset,
                "model": "mlp",
                "h0_mean": round(statistics.mean(h0s), 4),
                "h0_sd": round(statistics.stdev(h0s), 4) if len(h0s) > 1 else 0.0,
                "val_accuracy_mean": round(statistics.mean(accs), 4),
                "seeds": len(h0s),
            }
        )
    print("DIFFICULTY_REFERENCE = (")
    for row in rows:
        print(f"    {row!r},")
    print(")")


if __name__ == "__main__":
    main()
