"""PMH inside Lightning on the real two-site shift MNIST → UCI digits (8×8), with the H0 and layer monitors.

For each seed, two arms train the demo MLP from the same initial weights with ``PMHLightningModule``:
``plain`` (λ = 0) and ``matched`` (the PMH penalty at the input, Σ estimated by the ``domain`` estimator
from the labelled target pool, under a ``LossBudget``). ``PHMonitorCallback`` watches the train probe vs
source validation and may stop a run; ``LayerMonitorCallback`` logs the layer state; everything is logged
once, through Lightning's CSVLogger (``--out``). Deploy accuracy is measured on the UCI digits holdout,
which nothing else touches.

Run: ``.venv/bin/python examples/lightning_pmh.py [--quick] [--seeds 3] [--devices 1|2] [--strength 1.0]
[--threads 1] [--out runs/lightning_pmh]`` (``--devices 2`` runs DDP with gloo on the CPU).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset

from shiftlab.data import two_site
from shiftlab.integrations.lightning import (
    DEFAULT_BUDGET,
    LayerMonitorCallback,
    PHMonitorCallback,
    PMHLightningModule,
)
from shiftlab.pmh import BudgetSettings, digits_budget, digits_mlp, estimate_nuisance
from shiftlab.topology import MonitorConfig

#: The loss budgets the matched arm can use (see the module notes for what each did here).
BUDGETS: dict[str, BudgetSettings | None] = {
    "cap": BudgetSettings(min_ratio=0.0),
    "band": DEFAULT_BUDGET,
    "none": None,
}


def _accuracy(module: PMHLightningModule, x: torch.Tensor, y: torch.Tensor) -> float:
    module.eval()
    with torch.no_grad():
        return float((module(x).argmax(dim=1) == y).double().mean())


def _last(path: Path, key: str) -> list[float]:
    with path.open(newline="") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key, "") != ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the `shiftlab try --quick` data and epochs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=1, help="CPU processes; 2 runs DDP (gloo, spawn)")
    parser.add_argument("--strength", type=float, default=1.0, help="λ of the matched arm")
    parser.add_argument(
        "--budget",
        choices=tuple(BUDGETS),
        default="cap",
        help="cap: LossBudget(min_ratio=0); band: LossBudget() (5%%-30%%, floor at most 2λ); none: plain sum",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--out", default="runs/lightning_pmh", help="CSVLogger directory")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = digits_budget(args.quick, device="cpu")
    cfg = budget.config
    began = time.perf_counter()
    pair = two_site("mnist", "digits", seed=0, sizes=dict(budget.sizes))
    src, val, hold = pair.source_train, pair.source_val, pair.target_holdout
    sigma = estimate_nuisance(
        "domain",
        source=src.x,
        source_labels=src.y,
        target=pair.target_pool.x,
        target_labels=pair.target_pool_labels,
    )
    print(
        f"Σ: rank {sigma.rank}, trace {sigma.trace:.3f}, from {pair.target_pool.x.shape[0]} target-pool rows"
    )
    probe_rows = torch.randperm(src.y.numel(), generator=torch.Generator().manual_seed(0))[: val.y.numel()]
    results: dict[str, list[dict[str, Any]]] = {"plain": [], "matched": []}
    for seed in range(args.seeds):
        for arm, strength in (("plain", 0.0), ("matched", args.strength)):
            pl.seed_everything(seed, verbose=False)
            module = PMHLightningModule(
                digits_mlp(),
                sigma,
                strength=strength,
                budget=BUDGETS[args.budget] if strength > 0 else None,
                lr=cfg.lr,
                estimator=cfg.estimator,
                seed=seed,
            )
            ph = PHMonitorCallback(
                (src.x[probe_rows], src.y[probe_rows]), (val.x, val.y), config=MonitorConfig(patience=3)
            )
            layers = LayerMonitorCallback(["net.1", "net.3", "net.5"], val.x[:256])
            strategy: Any = "auto"
            if args.devices > 1:
                strategy = DDPStrategy(
                    start_method="spawn", process_group_backend="gloo", timeout=timedelta(minutes=5)
                )
            trainer = pl.Trainer(
                max_epochs=cfg.epochs,
                accelerator="cpu",
                devices=args.devices,
                strategy=strategy,
                logger=CSVLogger(args.out, name=f"{arm}-seed{seed}", version=0),
                callbacks=[ph, layers],
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                log_every_n_steps=10,
            )
            train = DataLoader(TensorDataset(src.x, src.y), batch_size=cfg.batch_size, shuffle=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer.fit(module, train, DataLoader(TensorDataset(val.x, val.y), batch_size=1024))
            metrics = Path(args.out) / f"{arm}-seed{seed}" / "version_0" / "metrics.csv"
            gaps, floors = _last(metrics, "ph/gap"), _last(metrics, "ph/noise_floor")
            results[arm].append(
                {
                    "deploy": _accuracy(module, hold.x, hold.y),
                    "source_val": _accuracy(module, val.x, val.y),
                    "epochs": len(gaps),
                    "gap": gaps[-1],
                    "floor": floors[-1],
                    "ratio": _last(metrics, "pmh/ratio")[-1],
                    "layer_state": _last(metrics, "layers/state")[-1],
                }
            )
    print(
        f"{args.seeds} seeds, {cfg.epochs} epochs max, {src.y.numel()} source images, devices={args.devices}"
    )
    print("arm       deploy %       source val %   epochs  last gap / floor   ratio  layer state (0 healthy)")
    for arm, runs in results.items():
        deploy = [100 * r["deploy"] for r in runs]
        source = [100 * r["source_val"] for r in runs]
        spread = statistics.stdev(deploy) if len(deploy) > 1 else 0.0
        print(
            f"{arm:8s}  {statistics.mean(deploy):5.1f} ± {spread:4.1f}   {statistics.mean(source):5.1f}"
            f"          {[r['epochs'] for r in runs]}  "
            f"{statistics.mean(r['gap'] for r in runs):.3f} / {statistics.mean(r['floor'] for r in runs):.3f}"
            f"      {statistics.mean(r['ratio'] for r in runs):.3f}  {[int(r['layer_state']) for r in runs]}"
        )
    print(f"total {time.perf_counter() - began:.0f} s (threads={args.threads}); logs in {args.out}")


if __name__ == "__main__":
    main()
