"""Reference difficulties of the bundled data sets (phase 1 of the PH pipeline, measured offline).

Produced by ``python examples/ph_difficulty_reference.py`` (it prints this table): for each data set,
:class:`~shiftlab.topology.PHTrainer` phase 1 with the default config (MLP, Adam at lr 1e-3, one epoch,
15 % stratified validation) at seeds 0, 1, 2; ``h0`` is the validation class-geometry H0 total
persistence (logits, cosine, centroid mode). Rerun the script after changing that protocol.

Read it as context, not as a difficulty scale: the H0 after one epoch does not order these data sets by
their accuracy (Fashion-MNIST has the lowest H0 but is easier than digits after one epoch), and its
spread over seeds is large; docs/claims.md measures the "difficulty" claim.
"""

from __future__ import annotations

from typing import Any

DIFFICULTY_REFERENCE: tuple[dict[str, Any], ...] = (
    {
        "dataset": "digits",
        "model": "mlp",
        "h0_mean": 2.8084,
        "h0_sd": 0.4148,
        "val_accuracy_mean": 0.7162,
        "seeds": 3,
    },
    {
        "dataset": "mnist-5k",
        "model": "mlp",
        "h0_mean": 3.0175,
        "h0_sd": 0.5526,
        "val_accuracy_mean": 0.8006,
        "seeds": 3,
    },
    {
        "dataset": "mnist",
        "model": "mlp",
        "h0_mean": 3.7734,
        "h0_sd": 0.374,
        "val_accuracy_mean": 0.929,
        "seeds": 3,
    },
    {
        "dataset": "fashion-mnist",
        "model": "mlp",
        "h0_mean": 2.1049,
        "h0_sd": 0.09,
        "val_accuracy_mean": 0.8485,
        "seeds": 3,
    },
)
