"""PMH falsification arms on the real two-site shift MNIST → UCI digits (8×8), K seeds.

Σ_task is estimated at the input from the labelled target estimation pool (600 UCI digits, disjoint from
the 997-image deploy holdout); every arm (plain, matched, isotropic, wrong, training on the labelled
target rows, CORAL) starts from the same initial weights and sees the same batch order per seed; λ is
chosen on source validation and, separately, on the 200-image labelled target validation split.

Run: ``.venv/bin/python examples/pmh_digits.py [--quick] [--threads 1] [--device cpu]
[--estimate labelled|pseudo|augmentation] [--site input|2|4] [--rank R] [--reestimate N]``
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from shiftlab.pmh._arms import run_arms
from shiftlab.pmh._digits import digits_budget, digits_mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the `shiftlab try --quick` budget")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest here)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--estimate",
        choices=("labelled", "pseudo", "augmentation"),
        default="labelled",
        help="Σ from the labelled target pool (default), from pseudo-labels of each seed's plain model, "
        "or from the digit augmentations on source rows (no target data)",
    )
    parser.add_argument(
        "--site", default="input", help="'input' or a layer of the MLP ('2', '4': ReLU outputs)"
    )
    parser.add_argument("--rank", type=int, default=None, help="rank of Σ (default: 95%% of its trace)")
    parser.add_argument(
        "--reestimate", type=int, default=0, help="re-estimate Σ every N epochs (hidden sites)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = digits_budget(args.quick, device=args.device)
    kwargs: dict[str, object] = {} if args.rank is None else {"rank": args.rank}
    if args.estimate == "pseudo":
        kwargs["target_labels"] = None
    began = time.perf_counter()
    pair = budget.pair(seed=0)
    loaded = time.perf_counter()
    result = run_arms(
        digits_mlp,
        pair,
        seeds=tuple(range(args.seeds)),
        estimate_kind="augmentation" if args.estimate == "augmentation" else "domain",
        estimate_kwargs=kwargs or None,
        site=args.site,
        strengths=budget.strengths,
        config=dataclasses.replace(budget.config, reestimate_every=args.reestimate),
        quiet=args.quiet,
    )
    done = time.perf_counter()
    print(f"{pair!r}\n{result.estimation}")
    est = result.estimate
    print(f"Σ: rank {est.rank}, trace {est.trace:.3f}, estimator {est.estimator}")
    print(f"data {loaded - began:.1f} s, arms {done - loaded:.1f} s (threads={args.threads}, {args.device})")
    columns = (
        "arm",
        "selection",
        "deploy %",
        "source val %",
        "target val %",
        "λ per seed",
        "drift Σ/⊥",
        "sens",
    )
    print("  ".join(columns))
    base = result.deploy("baseline")
    for row in result.table():
        sel = None if row["selection"] == "fixed" else row["selection"]
        paired = 100 * float((result.deploy(row["arm"], sel) - base).mean())
        print(
            f"{row['arm']:12} {row['selection']:10} "
            f"{100 * row['deploy_mean']:6.1f} ± {100 * row['deploy_std']:4.1f} "
            f"{100 * row['source_val_mean']:7.1f} ± {100 * row['source_val_std']:4.1f} "
            f"{100 * row['target_val_mean']:12.1f} {row['strengths']!s:>18} "
            f"{row['drift_ratio']:10.3f} {row['sensitivity_ratio']:6.2f}   paired vs plain {paired:+.1f}"
        )
    for arm in ("matched", "isotropic", "wrong"):
        for run in result.runs_for(arm, "target_val")[:1]:
            grid = ", ".join(
                f"λ={c.strength:g}: src {100 * c.source_val_accuracy:.1f} / tgt-val "
                f"{100 * (c.target_val_accuracy or 0):.1f} / deploy {100 * c.deploy_accuracy:.1f}"
                for c in run.candidates
            )
            print(f"  seed {run.seed} {arm} candidates: {grid}")


if __name__ == "__main__":
    main()
