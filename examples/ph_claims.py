"""Reproduce the original PH-training project's claims over seeds, with bootstrap CIs (docs/claims.md).

    python examples/ph_claims.py [--datasets mnist fashion-mnist digits] [--seeds 0 1 2 3 4 5 6 7]
                                 [--epochs 30] [--max-train 10000] [--model mlp|cnn|purefield]
                                 [--device auto|cpu|cuda] [--out runs/ph_claims.json]

For every data set and seed: a model (``--model``, default the MLP; Adam, lr 1e-3) trained for
``--epochs`` epochs on a stratified subsample of the training split (15 % of it held out for
validation, a train probe of the same size); after every epoch the train probe, validation and test
splits are evaluated. Test is used here only to *measure* the claims' targets (generalisation gap,
confusions), never to choose anything. ``--device cuda`` runs training, evaluation and the attack on
the GPU; the H0 statistics run on the CPU (they are small: 10 classes).

Per run it records: the validation H0 after one epoch (difficulty) and the final test accuracy; per
epoch the H0 gap (train probe vs validation) with its calibrated noise floor, the free baselines (loss gap
val - train, accuracy gap train - val) and the generalisation gap (train probe accuracy - test accuracy);
at the end, class distances (validation geometry) against test confusion rates and against FGSM pair
vulnerability on the test split. Summaries are means over seeds with 95 % percentile bootstrap CIs from
:func:`shiftlab.functional.paired_bootstrap_ci` (resampling seeds; paired where two statistics are
compared on the same seeds).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from torch.nn import functional

from shiftlab.data import load
from shiftlab.functional import paired_bootstrap_ci, partial_correlation, pearson, spearman
from shiftlab.report import atomic_write_text
from shiftlab.topology import (
    MonitorConfig,
    PHMonitor,
    build_model,
    class_geometry_from_features,
    confusion_matrix,
    fgsm_pair_vulnerability,
    pair_confusion_rates,
    score_pairs,
    split_null_gaps,
)

ORIGINAL_THRESHOLD = 0.08


def _split(y: torch.Tensor, fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    held, rest = [], []
    for c in torch.unique(y):
        members = torch.nonzero(y == c).flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        k = max(2, round(fraction * members.numel()))
        held.append(members[:k])
        rest.append(members[k:])
    return torch.cat(rest), torch.cat(held)


def _evaluate(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Loss, accuracy and float64 CPU logits (``x``, ``y`` on the model's device)."""
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(x[i : i + 2048]) for i in range(0, x.shape[0], 2048)])
    loss = float(functional.cross_entropy(logits, y))
    return loss, float((logits.argmax(1) == y).double().mean()), logits.double().cpu()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    return torch.device(name)


def run_one(
    dataset: str, seed: int, epochs: int, max_train: int, model: str = "mlp", device: str = "cpu"
) -> dict[str, Any]:
    dev = _device(device)
    train, test = load(dataset, "train"), load(dataset, "test")
    gen = torch.Generator().manual_seed(seed)
    x, y = train.images, train.labels
    if max_train < y.numel():
        _, keep = _split(y, max_train / y.numel(), gen)
        x, y = x[keep], y[keep]
    rest, held = _split(y, 0.15, gen)
    xv, yv, xf, yf = x[held], y[held], x[rest], y[rest]
    probe = torch.randperm(yf.numel(), generator=gen)[: yv.numel()]
    xp, yp = xf[probe], yf[probe]
    xt, yt = test.images, test.labels
    c = len(train.class_names)
    # every split lives on the device; labels and features come back to the CPU for the H0 statistics
    xf, yf, xp, xv, xt = (t.to(dev) for t in (xf, yf, xp, xv, xt))
    yp_d, yv_d, yt_d = yp.to(dev), yv.to(dev), yt.to(dev)
    net = build_model(model, tuple(x.shape[1:]), c, seed=seed).to(dev)  # type: ignore[arg-type]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    monitor = PHMonitor(MonitorConfig(seed=seed))
    batches = torch.Generator().manual_seed(seed + 1)
    epochs_out = []
    for epoch in range(epochs):
        net.train()
        for idx in torch.randperm(yf.numel(), generator=batches).split(128):
            idx = idx.to(dev)
            opt.zero_grad()
            functional.cross_entropy(net(xf[idx]), yf[idx]).backward()
            opt.step()
        lp, ap, fp = _evaluate(net, xp, yp_d)
        lv, av, fv = _evaluate(net, xv, yv_d)
        lt, at, _ = _evaluate(net, xt, yt_d)
        step = monitor.update(fp, yp, fv, yv)
        epochs_out.append(
            {
                "epoch": epoch,
                "train_loss": lp,
                "train_acc": ap,
                "val_loss": lv,
                "val_acc": av,
                "test_acc": at,
                "test_loss": lt,
                "h0_train": step.h0_train,
                "h0_val": step.h0_val,
                "gap": step.gap,
                "noise_floor": step.noise_floor,
                "alert": step.alert,
            }
        )
    _, _, fv = _evaluate(net, xv, yv_d)
    geometry = class_geometry_from_features(fv, yv)
    net.eval()
    with torch.no_grad():
        test_pred = torch.cat([net(xt[i : i + 2048]).argmax(1).cpu() for i in range(0, yt.numel(), 2048)])
    conf = score_pairs(
        geometry.distances, pair_confusion_rates(confusion_matrix(test_pred, yt, c)), seed=seed
    )
    attack_idx = torch.randperm(yt.numel(), generator=gen)[:2000]
    attack = fgsm_pair_vulnerability(net, xt[attack_idx.to(dev)], yt[attack_idx], c, epsilon=0.1)
    fgsm_score = score_pairs(geometry.distances, attack.pair_vulnerability, seed=seed)
    # two samples of one distribution at these sizes: random halves of the validation features
    half = yv.numel() // 2
    order = torch.randperm(yv.numel(), generator=gen)
    null = split_null_gaps(fv[order[:half]], yv[order[:half]], fv[order[half:]], yv[order[half:]], n_null=999)
    return {
        "dataset": dataset,
        "seed": seed,
        "model": model,
        "n_train": int(yf.numel()),
        "n_val": int(yv.numel()),
        "difficulty_h0": epochs_out[0]["h0_val"],
        "final_test_acc": epochs_out[-1]["test_acc"],
        "epochs": epochs_out,
        "confusion_spearman": conf.spearman,
        "confusion_mantel_p": conf.mantel_p,
        "confusion_precision_at_5": conf.precision_at_k,
        "fgsm_spearman": fgsm_score.spearman,
        "fgsm_mantel_p": fgsm_score.mantel_p,
        "fgsm_clean_acc": attack.clean_accuracy,
        "fgsm_adv_acc": attack.adversarial_accuracy,
        "split_half_abs_gap_mean": float(null.abs().mean()),
        "split_half_abs_gap_p95": float(torch.quantile(null.abs(), 0.95)),
        "split_half_false_alarm_at_0.08": float((null.abs() > ORIGINAL_THRESHOLD).double().mean()),
    }


def _gap_correlations(run: dict[str, Any]) -> dict[str, float]:
    """Across the epochs of one run: H0 gap and the free baselines against the generalisation gap."""
    e = run["epochs"]
    h0_gap = torch.tensor([abs(r["gap"]) for r in e], dtype=torch.float64)
    loss_gap = torch.tensor([r["val_loss"] - r["train_loss"] for r in e], dtype=torch.float64)
    acc_gap = torch.tensor([r["train_acc"] - r["val_acc"] for r in e], dtype=torch.float64)
    gen_gap = torch.tensor([r["train_acc"] - r["test_acc"] for r in e], dtype=torch.float64)
    return {
        "r_h0": float(pearson(h0_gap, gen_gap)),
        "r_loss": float(pearson(loss_gap, gen_gap)),
        "r_acc": float(pearson(acc_gap, gen_gap)),
        "partial_h0_given_loss": partial_correlation(h0_gap, gen_gap, loss_gap).r,
        "partial_h0_given_acc": partial_correlation(h0_gap, gen_gap, acc_gap).r,
        "fixed_threshold_alert_rate": sum(abs(r["gap"]) > ORIGINAL_THRESHOLD for r in e) / len(e),
        "calibrated_alert_rate": sum(r["alert"] for r in e) / len(e),
    }


def ci(values: list[float], other: list[float] | None = None) -> str:
    """Mean over seeds (or paired mean difference) with a 95 % percentile bootstrap CI over seeds."""
    a = torch.tensor(values, dtype=torch.float64)
    if other is None:
        res = paired_bootstrap_ci(lambda t: t.mean(dim=1), a, n_boot=4000, seed=0)
    else:
        b = torch.tensor(other, dtype=torch.float64)
        res = paired_bootstrap_ci(lambda s, t: (s - t).mean(dim=1), a, b, n_boot=4000, seed=0)
    return f"{float(res.estimate):+.3f} [{float(res.ci_low):+.3f}, {float(res.ci_high):+.3f}]"


def summarise(runs: list[dict[str, Any]]) -> None:
    """Per model (runs saved before ``--model`` existed are MLP runs): every claim, data set by data set."""
    for model in sorted({r.get("model", "mlp") for r in runs}):
        _summarise_model(model, [r for r in runs if r.get("model", "mlp") == model])


def _summarise_model(model: str, runs: list[dict[str, Any]]) -> None:
    for dataset in sorted({r["dataset"] for r in runs}):
        rs = [r for r in runs if r["dataset"] == dataset]
        g = [_gap_correlations(r) for r in rs]
        print(
            f"\n## {dataset} / {model} ({len(rs)} seeds, n_train {rs[0]['n_train']}, n_val {rs[0]['n_val']})"
        )
        print(f"final test accuracy          {ci([r['final_test_acc'] for r in rs])}")
        print(f"r(|H0 gap|, gen gap)         {ci([x['r_h0'] for x in g])}")
        print(f"r(loss gap, gen gap)         {ci([x['r_loss'] for x in g])}")
        print(f"r(acc gap, gen gap)          {ci([x['r_acc'] for x in g])}")
        print(f"r_H0 - r_loss (paired)       {ci([x['r_h0'] for x in g], [x['r_loss'] for x in g])}")
        print(f"partial r(H0 | loss gap)     {ci([x['partial_h0_given_loss'] for x in g])}")
        print(f"partial r(H0 | acc gap)      {ci([x['partial_h0_given_acc'] for x in g])}")
        print(f"alert rate |gap| > 0.08      {ci([x['fixed_threshold_alert_rate'] for x in g])}")
        print(f"alert rate calibrated        {ci([x['calibrated_alert_rate'] for x in g])}")
        print(f"split-half |gap| mean        {ci([r['split_half_abs_gap_mean'] for r in rs])}")
        print(f"split-half |gap| p95         {ci([r['split_half_abs_gap_p95'] for r in rs])}")
        print(f"split-half P(|gap| > 0.08)   {ci([r['split_half_false_alarm_at_0.08'] for r in rs])}")
        for key in ("confusion_spearman", "confusion_precision_at_5", "fgsm_spearman"):
            vals = [r[key] for r in rs if r[key] is not None]
            print(f"{key:<28} {ci(vals) if len(vals) > 1 else vals} (defined in {len(vals)}/{len(rs)})")
        for key in ("confusion_mantel_p", "fgsm_mantel_p"):
            vals = [r[key] for r in rs if r[key] is not None]
            print(
                f"{key:<28} max {max(vals):.3f}, median {sorted(vals)[len(vals) // 2]:.3f}" if vals else key
            )
        print(
            f"FGSM accuracy clean -> adv   {ci([r['fgsm_clean_acc'] for r in rs])} -> "
            f"{ci([r['fgsm_adv_acc'] for r in rs])}"
        )
    h = torch.tensor([r["difficulty_h0"] for r in runs], dtype=torch.float64)
    acc = torch.tensor([r["final_test_acc"] for r in runs], dtype=torch.float64)
    res = paired_bootstrap_ci(pearson, h, acc, n_boot=4000, seed=0)
    print(
        f"\ndifficulty ({model}): r(1-epoch H0, final test acc) over {len(runs)} runs "
        f"{float(res.estimate):+.3f} [{float(res.ci_low):+.3f}, {float(res.ci_high):+.3f}], "
        f"Spearman {float(spearman(h, acc)):+.3f}"
    )
    for dataset in sorted({r["dataset"] for r in runs}):
        rs = [r for r in runs if r["dataset"] == dataset]
        mean_h = sum(r["difficulty_h0"] for r in rs) / len(rs)
        mean_a = sum(r["final_test_acc"] for r in rs) / len(rs)
        print(f"  {dataset:>14}: 1-epoch H0 {mean_h:.3f}, final test accuracy {mean_a:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist", "digits"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-train", type=int, default=10000)
    parser.add_argument("--model", default="mlp", choices=["mlp", "cnn", "purefield"])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", default="runs/ph_claims.json")
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
        for seed in args.seeds:
            run = run_one(dataset, seed, args.epochs, args.max_train, args.model, args.device)
            runs.append(run)
            last = run["epochs"][-1]
            print(
                f"{dataset} seed {seed}: test acc {last['test_acc']:.4f}, confusion r "
                f"{run['confusion_spearman']}, fgsm r {run['fgsm_spearman']}",
                flush=True,
            )
            atomic_write_text(args.out, json.dumps(runs, indent=1, allow_nan=False) + "\n")
    summarise(runs)


if __name__ == "__main__":
    main()
