"""OT weight perturbation on the 2-D toy: Section 2 (towards a shifted target), Section 3 (towards evidence).

Pretrains one WGAN-GP generator on four Gaussians, then runs both sections from it and prints, for each:
validation W2 before/after (the numbers accept/reject saw), an unbiased test W2 on fresh quasi-random
latents against fresh target draws, the sampling floor of that test W2, mode occupancy, the number of
steps until validation W2 < 0.5 and the median seconds per step.

    .venv/bin/python examples/generative_toy.py --out out/generative_toy

All W2 values are exact (POT) and in data units (not W2^2, not geomloss' W2^2 / 2).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch

from shiftlab.generative import (
    Critic,
    Generator,
    PerturbConfig,
    ToyReport,
    four_gaussians,
    pretrain_wgan_gp,
    run_toy,
)
from shiftlab.report import atomic_write_bytes, figure_to_png


def _steps_to(report: ToyReport, threshold: float) -> int | None:
    for i, w in enumerate(report.run.w2_trajectory()):
        if w < threshold:
            return i
    return None


def _summary(report: ToyReport) -> str:
    run = report.run
    reach = _steps_to(report, 0.5)
    return "\n".join(
        [
            f"  validation W2 {run.w2_initial:.3f} -> {run.w2_final:.3f}  ({run.status}: {run.reason})",
            f"  test W2       {report.test_w2_before:.3f} -> {report.test_w2_after:.3f}"
            f"   (sampling floor {report.test_w2_floor:.3f})",
            f"  steps to validation W2 < 0.5: {reach}; run {run.steps_run}, accepted {run.accepted_steps}",
            f"  median s/step {run.seconds_per_step_median:.3f}; total {run.seconds_total:.1f} s",
            f"  mode occupancy before {tuple(round(v, 3) for v in report.coverage_before.occupancy)}"
            f" off-mode {report.coverage_before.off_mode:.3f}",
            f"  mode occupancy after  {tuple(round(v, 3) for v in report.coverage_after.occupancy)}"
            f" off-mode {report.coverage_after.off_mode:.3f}",
            f"  ||theta - theta0|| per layer: { ({k: round(v, 3) for k, v in run.drift_per_layer.items()}) }",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="write reports and PNG figures here")
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (timings depend on it)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # initial weights of the networks

    pre = pretrain_wgan_gp(Generator(), Critic(), four_gaussians(), steps=args.pretrain_steps, seed=args.seed)
    print(f"WGAN-GP pretraining: {args.pretrain_steps} steps in {pre.seconds:.1f} s")
    ckpt = (args.out or Path("out/generative_toy")) / "pretrained.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"generator": pre.generator.state_dict()}, buffer)
    atomic_write_bytes(ckpt, buffer.getvalue())

    runs = {
        "section2 (least squares)": ("target", PerturbConfig(max_steps=args.max_steps, seed=args.seed)),
        "section2 (first-order baseline)": (
            "target",
            PerturbConfig(max_steps=args.max_steps, seed=args.seed, update="first-order"),
        ),
        "section2 (capacity-scaled cap)": (
            "target",
            PerturbConfig(max_steps=args.max_steps, seed=args.seed, capacity="interpolation"),
        ),
        "section3 (evidence)": ("evidence", PerturbConfig(max_steps=args.max_steps, seed=args.seed)),
        "section3 (virtual target only)": (
            "evidence",
            PerturbConfig(max_steps=args.max_steps, seed=args.seed, sinkhorn_weight=0.0),
        ),
        "section3 (Sinkhorn multi-marginal only)": (
            "evidence",
            PerturbConfig(max_steps=args.max_steps, seed=args.seed, virtual_weight=0.0),
        ),
    }
    for name, (section, cfg) in runs.items():
        report = run_toy(section, cfg, checkpoint=ckpt, seed=args.seed)  # type: ignore[arg-type]
        print(f"{name}:\n{_summary(report)}")
        if args.out is not None:
            folder = args.out / name.split(" ")[0] / name.split("(")[1].rstrip(")").replace(" ", "_")
            report.save(folder)
            for fig_name, fig in report.figures().items():
                atomic_write_bytes(folder / f"{fig_name.replace(' ', '_')}.png", figure_to_png(fig))


if __name__ == "__main__":
    main()
