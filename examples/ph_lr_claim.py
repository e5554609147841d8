"""Claim 6 of docs/claims.md: does the smallest H0 coefficient of variation pick a good learning rate?

    OMP_NUM_THREADS=1 python examples/ph_lr_claim.py [--datasets mnist fashion-mnist digits]
        [--seeds 0 1 2 3 4 5 6 7] [--optimizers adam sgd] [--lrs 1e-4 3e-4 1e-3 3e-3 1e-2 3e-2 1e-1]
        [--max-train 5000] [--search-epochs 3] [--epochs 8] [--model mlp|cnn|purefield]
        [--device auto|cpu|cuda] [--out runs/ph_lr_claim.json]
    python examples/ph_lr_claim.py --summarise runs/ph_lr_claim.json

For every data set, optimizer and seed, :meth:`shiftlab.topology.PHTrainer.search_lr` (phase 2 of the
pipeline, unchanged) trains each candidate rate for ``--search-epochs`` epochs and records the validation
H0 trajectory, accuracy and loss; :func:`shiftlab.topology.choose_lr` then picks one rate by each rule:
``h0_cv`` (the original project's), ``val_accuracy`` (the pipeline's default) and ``val_loss`` (a free
baseline). Separately, the full pipeline (:meth:`PHTrainer.run` with ``lr`` fixed: phase 3 with the H0
monitor's early stop and the best-validation checkpoint, then one test evaluation) is run at *every*
candidate rate, so each rule's choice is scored by the test accuracy it leads to, against the best rate
in hindsight (regret) and against picking a rate at random (the mean regret over the grid).

The summary gives per data set and optimizer the mean regret of each rule with a 95 % percentile
bootstrap CI over seeds, the paired differences of the H0 rule against both validation rules, which
rates each rule chose, and the verdict under the rule stated in docs/claims.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import Counter
from typing import Any

import torch
from ph_claims import ci

from shiftlab.report import atomic_write_text, jsonable
from shiftlab.topology import MonitorConfig, PHTrainConfig, PHTrainer, choose_lr

RULES = ("h0_cv", "val_accuracy", "val_loss")
MARGIN = 0.01  # one point of test accuracy: the non-inferiority margin of the verdict
CHANCE = 0.1  # test accuracy credited to a rate whose training diverged (10 balanced classes)


def run_one(args: argparse.Namespace, dataset: str, optimizer: str, seed: int) -> dict[str, Any]:
    config = PHTrainConfig(
        dataset=dataset,
        model=args.model,
        optimizer=optimizer,
        epochs=args.epochs,
        lr_candidates=tuple(args.lrs),
        search_epochs=args.search_epochs,
        max_train=args.max_train,
        fgsm_max_samples=200,  # phase 4 does not enter the test accuracy; keep it cheap
        monitor=MonitorConfig(seed=seed),
        seed=seed,
        device=args.device,
    )
    searched = PHTrainer(config).search_lr()
    choices: dict[str, float | None] = {}
    for rule in RULES:
        try:
            choices[rule] = choose_lr(searched, rule)  # type: ignore[arg-type]
        except ValueError:
            choices[rule] = None
    test_acc: dict[str, float | None] = {}
    stopped: dict[str, int | None] = {}
    for lr in args.lrs:
        try:
            report = PHTrainer(dataclasses.replace(config, lr=lr)).run(quiet=True)
        except FloatingPointError:
            test_acc[repr(lr)], stopped[repr(lr)] = None, None
            continue
        test_acc[repr(lr)], stopped[repr(lr)] = report.test_accuracy, report.stop_epoch
    return {
        "dataset": dataset,
        "optimizer": optimizer,
        "seed": seed,
        "model": args.model,
        "search": [dataclasses.asdict(c) for c in searched],
        "choices": choices,
        "test_accuracy": test_acc,
        "stop_epoch": stopped,
    }


def _regrets(run: dict[str, Any]) -> dict[str, float]:
    """Regret of each rule and of a uniformly random pick: best test accuracy minus the choice's."""
    acc = {float(k): (CHANCE if v is None else v) for k, v in run["test_accuracy"].items()}
    best = max(acc.values())
    out = {"random": best - sum(acc.values()) / len(acc)}
    for rule in RULES:
        lr = run["choices"][rule]
        out[rule] = float("nan") if lr is None else best - acc[float(lr)]
    return out


def _verdict(d_acc: Any, d_loss: Any, h0_vs_random: Any) -> str:
    """The rule of docs/claims.md, on paired CIs over seeds (lower/upper bounds of regret differences)."""
    if float(d_acc.ci_low) > 0 or float(d_loss.ci_low) > 0 or float(h0_vs_random.ci_low) >= 0:
        return "does not hold"
    if float(d_acc.ci_high) < MARGIN and float(d_loss.ci_high) < MARGIN and float(h0_vs_random.ci_high) < 0:
        return "holds"
    return "inconclusive"


def _fmt_lr(lr: float | None) -> str:
    return "undefined" if lr is None else f"{lr:g}"


def _mechanism(runs: list[dict[str, Any]]) -> None:
    """Per optimizer: does a smaller H0 CV go with a better rate? And what the H0 rule's picks reached."""
    from shiftlab.functional import spearman

    print()
    for optimizer in sorted({r["optimizer"] for r in runs}):
        rs = [r for r in runs if r["optimizer"] == optimizer]
        rhos = []
        for r in rs:
            scored = [c for c in r["search"] if c["h0_cv"] is not None]
            cv = torch.tensor([c["h0_cv"] for c in scored], dtype=torch.float64)
            acc = torch.tensor(
                [r["test_accuracy"][repr(c["lr"])] or CHANCE for c in scored], dtype=torch.float64
            )
            rhos.append(float(spearman(cv, acc)))
        picked = [
            r["test_accuracy"][repr(r["choices"]["h0_cv"])] for r in rs if r["choices"]["h0_cv"] is not None
        ]
        stops = sum(v is not None for r in rs for v in r["stop_epoch"].values())
        print(
            f"{optimizer}: Spearman(H0 CV, test accuracy) over the grid, mean {sum(rhos) / len(rhos):+.2f} "
            f"(from {min(rhos):+.2f} to {max(rhos):+.2f}, {len(rs)} runs); test accuracy at the H0 rule's "
            f"picks {min(picked):.3f}-{max(picked):.3f}; early stops {stops} of "
            f"{sum(len(r['stop_epoch']) for r in rs)} trainings"
        )


def summarise(runs: list[dict[str, Any]]) -> None:
    from shiftlab.functional import paired_bootstrap_ci

    verdicts = []
    cells = sorted({(r["dataset"], r["optimizer"]) for r in runs})
    for dataset, optimizer in cells:
        rs = [r for r in runs if (r["dataset"], r["optimizer"]) == (dataset, optimizer)]
        reg = [_regrets(r) for r in rs]
        print(f"\n## {dataset} / {optimizer} / {rs[0]['model']} ({len(rs)} seeds)")
        lrs = [float(k) for k in rs[0]["test_accuracy"]]
        mean_acc = [
            sum((r["test_accuracy"][k] or CHANCE) for r in rs) / len(rs) for k in rs[0]["test_accuracy"]
        ]
        per_lr = ", ".join(f"{lr:g}: {a:.4f}" for lr, a in zip(lrs, mean_acc, strict=True))
        print(f"test accuracy per lr (mean): {per_lr}")
        for rule in (*RULES, "random"):
            picks = "" if rule == "random" else dict(Counter(_fmt_lr(r["choices"][rule]) for r in rs))
            print(f"regret {rule:<13} {ci([g[rule] for g in reg])}  picks {picks}")
        diffs = {}
        for base in ("val_accuracy", "val_loss", "random"):
            a = torch.tensor([g["h0_cv"] for g in reg], dtype=torch.float64)
            b = torch.tensor([g[base] for g in reg], dtype=torch.float64)
            diffs[base] = paired_bootstrap_ci(lambda s, t: (s - t).mean(dim=1), a, b, n_boot=4000, seed=0)
            print(f"regret h0_cv - {base:<13} {ci([g['h0_cv'] for g in reg], [g[base] for g in reg])}")
        verdict = _verdict(diffs["val_accuracy"], diffs["val_loss"], diffs["random"])
        verdicts.append(verdict)
        print(f"verdict: {verdict}")
    _mechanism(runs)
    counts = Counter(verdicts)
    overall = (
        "holds"
        if counts["holds"] == len(verdicts)
        else "does not hold"
        if 2 * counts["does not hold"] >= len(verdicts)
        else "inconclusive"
    )
    print(f"\noverall: {overall} ({dict(counts)} over {len(verdicts)} data set x optimizer cells)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist", "digits"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--optimizers", nargs="+", default=["adam", "sgd"])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    parser.add_argument("--max-train", type=int, default=5000)
    parser.add_argument("--search-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn", "purefield"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", default="runs/ph_lr_claim.json")
    parser.add_argument(
        "--summarise", nargs="+", metavar="JSON", help="only summarise saved runs (files are pooled)"
    )
    args = parser.parse_args()
    if args.summarise:
        saved: list[dict[str, Any]] = []
        for path in args.summarise:
            with open(path, encoding="utf-8") as fh:
                saved.extend(json.load(fh))
        summarise(saved)
        return
    runs = []
    for dataset in args.datasets:
        for optimizer in args.optimizers:
            for seed in args.seeds:
                start = time.perf_counter()
                run = run_one(args, dataset, optimizer, seed)
                runs.append(run)
                best = max(v for v in run["test_accuracy"].values() if v is not None)
                print(
                    f"{dataset} {optimizer} seed {seed}: choices {run['choices']}, best test acc "
                    f"{best:.4f} ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
                atomic_write_text(args.out, json.dumps(jsonable(runs), indent=1, allow_nan=False) + "\n")
    summarise(runs)


if __name__ == "__main__":
    main()
