"""Frozen-feature PMH gate on real data: MNIST (site A) -> UCI optdigits (site B), 8x8 pixels as features.

Runs every arm (baseline, matched, isotropic, wrong, CORAL, and training on the labelled target rows)
through ``evaluate_frozen`` for Σ estimated with and without the target pool's labels, and prints the
verdicts. Run: ``python examples/pmh_frozen_digits.py [--n-source 4000] [--out DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console

from shiftlab.data import two_site
from shiftlab.pmh._frozen import FrozenConfig, evaluate_frozen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-source", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    pair = two_site("mnist", "digits", seed=0)
    xs = pair.source_train.x[: args.n_source].flatten(1).double().numpy()
    ys = pair.source_train.y[: args.n_source].numpy()
    xt = torch.cat([pair.target_pool.x, pair.target_val.x, pair.target_holdout.x]).flatten(1).double().numpy()
    yt = torch.cat([pair.target_pool_labels, pair.target_val.y, pair.target_holdout.y]).numpy()
    console = Console()
    for labelled in (True, False):
        report = evaluate_frozen(xs, ys, xt, yt, config=FrozenConfig(use_target_labels=labelled))
        report.render(console)
        if report.verdict.recommendation:
            console.print(f"recommendation: {report.verdict.recommendation}")
        if args.out is not None:
            report.save(args.out / ("labelled" if labelled else "label_free"))


if __name__ == "__main__":
    main()
