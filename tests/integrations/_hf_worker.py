"""One rank of the 2-process (gloo) PMHHFTrainer run of test_huggingface_distributed.py (module level, so
``torch.multiprocessing.spawn`` can pickle it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, PrinterCallback, TrainingArguments

from shiftlab.integrations.huggingface import HFPenaltyConfig, PMHHFTrainer
from shiftlab.pmh import NuisanceEstimate

H, T, VOCAB = 16, 6, 40


def model(
    seed: int = 0,
    *,
    dropout: float = 0.0,
    attention: str = "eager",
    labels: int = 3,
    exact_norms: bool = True,
) -> BertForSequenceClassification:
    """A 2-layer BERT with a large classifier head (so the penalty is not negligible next to the task
    loss); ``exact_norms`` swaps its layer norms for :class:`ManualLayerNorm`."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=H,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        attn_implementation=attention,
    )
    net = BertForSequenceClassification(config)
    with torch.no_grad():
        net.classifier.weight.mul_(50.0)
    # the exact jvp penalty (no random probes, so 1 and 2 processes can agree) needs layer norms whose JVP
    # torch differentiates correctly
    for parent in list(net.modules()) if exact_norms else []:
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, ManualLayerNorm(child))
    return net


class ManualLayerNorm(nn.Module):
    """LayerNorm from elementary ops (torch's fused layer_norm has a wrong JVP derivative, pytorch#196700)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)
        return (
            centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight + self.bias
        )


def data(n: int = 8) -> list[dict[str, Any]]:
    """8 rows: with a global batch of 8 every step sees all of them, on 1 process or split over 2."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (n, T), generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [
        {"input_ids": ids[i], "attention_mask": torch.ones(T, dtype=torch.long), "labels": int(y[i])}
        for i in range(n)
    ]


def estimate() -> NuisanceEstimate:
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(H, 2, generator=g, dtype=torch.float64))
    factor = (3.0 * q).float()
    spectrum = torch.cat([factor.double().pow(2).sum(0), torch.zeros(H - 2, dtype=torch.float64)])
    return NuisanceEstimate(factor, 0.0, spectrum.float(), "bert.embeddings", (H,), "style", {"n_pairs": 10})


def train(out: str, *, strength: float, world: int) -> PMHHFTrainer:
    args = TrainingArguments(
        str(Path(out) / "hf"),
        per_device_train_batch_size=8 // world,  # the same global batch of 8 for 1 and 2 processes
        max_steps=4,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        logging_steps=1,
        ddp_backend="gloo" if world > 1 else None,
    )
    trainer = PMHHFTrainer(
        model=model(),
        args=args,
        train_dataset=data(),
        nuisance=estimate(),
        pmh=HFPenaltyConfig(strength=strength, estimator="jvp"),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer


def run(rank: int, world: int, out: str) -> None:
    # accelerate reads the rendezvous address from the environment even though launch() has already
    # joined the process group (through a file), which it then uses as is
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    found = {}
    for strength in (0.0, 1.0):
        trainer = train(out, strength=strength, world=world)
        net = trainer.accelerator.unwrap_model(trainer.model)
        found[f"state_{strength:g}"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        found[f"log_{strength:g}"] = [dict(e) for e in trainer.state.log_history]
        found["wrapped"] = type(trainer.model_wrapped).__name__
        found["world"] = trainer.args.world_size
    torch.save(found, Path(out) / f"rank{rank}.pt")
