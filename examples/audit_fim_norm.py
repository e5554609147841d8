"""Audit FIM_norm and the H0 gap on real training runs: all four stages of the Marginal Baseline Eval.

Trains a grid of small networks on real data (UCI digits and MNIST): capacity x label noise x architecture
(plain, BatchNorm, LayerNorm) x seeds. For every run it records, at initialisation, after one epoch
("early") and at the end of training:

- ``fim_norm``: the normalised effective rank of the empirical Fisher at N = 128 samples (fixed N);
- ``h0_gap``: |H0(train) - H0(validation)|, H0 the total persistence (sum of minimum-spanning-tree edge
  lengths) of the 10 class-mean logit directions under cosine distance, as the original PH project
  computes it (:func:`shiftlab.topology.class_geometry_from_features`);
- the trivial baselines: validation loss (early) and training loss at init;
- the target: final test accuracy.

Then it runs ``acid_test`` (width and label noise as drivers), ``architecture_harness``,
``baseline_control`` (the partial correlation given early validation loss and the architecture, then up
the ladder to the grid's own drivers, width and label noise, with the data set as a group) and
``init_probe`` for both metrics, and writes every report (JSON + HTML with
figures) plus ``runs.csv`` and ``summary.md`` to ``--out``.

Run: ``.venv/bin/python examples/audit_fim_norm.py`` (about 10-20 minutes on 2 CPU cores; ``--quick`` for a
1-2 minute smoke run on digits only). Re-audit the table from the shell:
``shiftlab audit out/audit_fim_norm/runs.csv --metrics fim_norm_early,h0_gap_early --target test_acc
--baselines early_val_loss,arch --group dataset``. (Runs here are independent: different configurations and
seeds share nothing, so no inference unit is declared; ``--unit`` is for runs that do, e.g. checkpoints of one
run.)
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shiftlab.audit import MBEConfig, acid_test, architecture_harness, baseline_control, fim_norm, init_probe
from shiftlab.data import load
from shiftlab.report import atomic_write_text
from shiftlab.topology import class_geometry_from_features

FIM_N = 128
CE = nn.functional.cross_entropy


def data(name: str, quick: bool) -> dict[str, torch.Tensor]:
    """Train / validation / test tensors (flattened images) of one real data set."""
    if name == "digits":
        train, test = load("digits", "train"), load("digits", "test")
        x, y = train.images.flatten(1), train.labels
        cut = 1000
        return {
            "x": x[:cut],
            "y": y[:cut],
            "xv": x[cut:],
            "yv": y[cut:],
            "xt": test.images.flatten(1),
            "yt": test.labels,
        }
    train, valid, test = load("mnist", "train"), load("mnist", "valid"), load("mnist", "test")
    n = 2000 if quick else 5000
    return {
        "x": train.images.flatten(1)[:n],
        "y": train.labels[:n],
        "xv": valid.images.flatten(1)[:1000],
        "yv": valid.labels[:1000],
        "xt": test.images.flatten(1)[:2000],
        "yt": test.labels[:2000],
    }


def model(d_in: int, width: int, arch: str) -> nn.Module:
    norm = {"plain": nn.Identity, "batchnorm": nn.BatchNorm1d, "layernorm": nn.LayerNorm}[arch]
    return nn.Sequential(
        nn.Linear(d_in, width),
        norm(width),
        nn.ReLU(),
        nn.Linear(width, width),
        norm(width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def h0(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Total H0 persistence of class-mean logit directions (cosine distance), via shiftlab.topology."""
    return class_geometry_from_features(logits, labels, n_classes=10, mode="centroid").h0


def measure(net: nn.Module, d: dict[str, torch.Tensor], labels: torch.Tensor, seed: int) -> dict[str, float]:
    net.eval()
    with torch.no_grad():
        val_loss = float(CE(net(d["xv"]), d["yv"]))
        gap = abs(h0(net(d["x"]), labels) - h0(net(d["xv"]), d["yv"]))
    fim = fim_norm(net, CE, d["x"], labels, n=FIM_N, seed=seed).value
    net.train()
    return {"val_loss": val_loss, "h0_gap": gap, "fim_norm": fim}


def train_run(
    d: dict[str, torch.Tensor], width: int, noise: float, arch: str, seed: int, epochs: int
) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    labels = d["y"].clone()
    flip = torch.rand(len(labels), generator=gen) < noise
    labels[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=gen)
    net = model(d["x"].shape[1], width, arch)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    row: dict[str, float] = {}
    at_init = measure(net, d, labels, seed)
    with torch.no_grad():
        row["init_train_loss"] = float(CE(net(d["x"]), labels))
    row.update({f"{k}_init": v for k, v in at_init.items() if k != "val_loss"})
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=gen)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            if len(batch) < 2:
                continue
            opt.zero_grad()
            CE(net(d["x"][batch]), labels[batch]).backward()
            opt.step()
        if epoch == 0:
            early = measure(net, d, labels, seed)
            row.update(
                {
                    "early_val_loss": early["val_loss"],
                    "fim_norm_early": early["fim_norm"],
                    "h0_gap_early": early["h0_gap"],
                }
            )
    final = measure(net, d, labels, seed)
    row.update({"fim_norm_final": final["fim_norm"], "h0_gap_final": final["h0_gap"]})
    net.eval()
    with torch.no_grad():
        row["test_acc"] = float((net(d["xt"]).argmax(1) == d["yt"]).float().mean())
    return row


def grid(quick: bool) -> list[dict[str, object]]:
    datasets = ("digits",) if quick else ("digits", "mnist")
    widths = (4, 64) if quick else (4, 16, 128)
    noises = (0.0, 0.4) if quick else (0.0, 0.2, 0.4)
    archs = ("plain", "layernorm") if quick else ("plain", "batchnorm", "layernorm")
    seeds = (0, 1, 2)
    rows: list[dict[str, object]] = []
    for name in datasets:
        d = data(name, quick)
        epochs = {"digits": 30, "mnist": 10}[name]
        for width, noise, arch, seed in itertools.product(widths, noises, archs, seeds):
            start = time.perf_counter()
            result = train_run(d, width, noise, arch, seed, epochs)
            rows.append(
                {
                    "dataset": name,
                    "arch": arch,
                    "width": width,
                    "log2_width": math.log2(width),
                    "label_noise": noise,
                    "seed": seed,
                    **result,
                }
            )
            print(
                f"{name} {arch:>9} w={width:<3} noise={noise:.1f} seed={seed}: test acc "
                f"{result['test_acc']:.3f}, FIM_norm {result['fim_norm_final']:.3f}, H0 gap "
                f"{result['h0_gap_final']:.3f} ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    return rows


def write_csv(rows: list[dict[str, object]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/audit_fim_norm"))
    parser.add_argument("--quick", action="store_true", help="digits only, a smaller grid")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: one thread avoids thread-pool contention on shared CPUs
    rows = grid(args.quick)
    write_csv(rows, args.out / "runs.csv")
    runs = {key: np.asarray([r[key] for r in rows]) for key in rows[0]}
    config = MBEConfig()
    summary = ["# FIM_norm and H0 gap audit", "", f"{len(rows)} runs; reports in sub-folders.", ""]
    drivers = ["log2_width", "label_noise"]
    for metric in ("fim_norm", "h0_gap"):
        reports = {}
        for name in sorted(set(runs["dataset"].tolist())):
            sub = {k: v[runs["dataset"] == name] for k, v in runs.items()}
            for when in ("early", "final"):
                m = f"{metric}_{when}"
                reports[f"1_acid_{m}_{name}"] = acid_test(sub, m, "test_acc", drivers, config=config)
                reports[f"2_harness_{m}_{name}"] = architecture_harness(
                    sub, m, "test_acc", drivers, "arch", config=config
                )
            reports[f"4_init_{metric}_{name}"] = init_probe(
                sub, f"{metric}_init", "test_acc", "init_train_loss", config=config
            )
        metrics = [f"{metric}_early", f"{metric}_final"]
        reports[f"3_baseline_{metric}"] = baseline_control(
            runs, metrics, "test_acc", ["early_val_loss", "arch"], group="dataset", config=config
        )
        # up the ladder to the grid's own drivers: anything left beyond loss, architecture, width and noise?
        reports[f"3_ladder_{metric}"] = baseline_control(
            runs,
            metrics,
            "test_acc",
            ["early_val_loss", "arch", "log2_width", "label_noise"],
            group="dataset",
            config=config,
        )
        summary.append(f"## {metric}")
        for key, report in reports.items():
            report.save(args.out / key)
            summary.append(f"- `{key}`: {report.headline()}")
            print(report.headline())
        rows = [*reports[f"3_baseline_{metric}"].results, *reports[f"3_ladder_{metric}"].results]
        summary += [
            "",
            "| metric | group | given | raw rho [CI] | partial rho [CI] | class |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            raw = f"{r.raw_r:+.2f} [{r.raw_ci_low:+.2f}, {r.raw_ci_high:+.2f}]"
            partial = f"{r.partial_r:+.2f} [{r.partial_ci_low:+.2f}, {r.partial_ci_high:+.2f}]"
            given = ", ".join(r.controls)
            summary.append(f"| {r.metric} | {r.group} | {given} | {raw} | {partial} | {r.verdict.value} |")
        summary.append("")
        reports[f"3_ladder_{metric}"].render()
    atomic_write_text(args.out / "summary.md", "\n".join(summary) + "\n")
    print(f"wrote {args.out}/summary.md, runs.csv and one folder per report")


if __name__ == "__main__":
    main()
