"""The full PH training pipeline on a real data set, with the HTML report.

    python examples/ph_train.py --dataset mnist --model mlp --epochs 20 --out runs/ph_mnist
    python examples/ph_train.py --dataset fashion-mnist --model cnn --epochs 15 --out runs/ph_fashion

Same as ``shiftlab ph train``: difficulty probe, learning-rate search (H0-CV and validation accuracy, both
reported), training with the calibrated H0 monitor and the layer monitor, then confusion pairs scored
against the validation confusion matrix, the class dendrogram and a real FGSM attack. Writes
``report.json`` and ``report.html`` (figures inline) to ``--out``.
"""

from __future__ import annotations

import argparse

from shiftlab.topology import PHTrainConfig, PHTrainer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/ph_train")
    args = parser.parse_args()
    config = PHTrainConfig(
        dataset=args.dataset, model=args.model, epochs=args.epochs, max_train=args.max_train, seed=args.seed
    )
    report = PHTrainer(config).run()
    report.render()
    paths = report.save(args.out)
    print(f"saved {paths['json']} and {paths['html']}")


if __name__ == "__main__":
    main()
