"""Is the encoder what limits the skills model? MiniLM fine-tuned end to end as the five-skill
classifier (mean pooling + a linear head), trained like the shipped model (router_mix train with
code snippets, skills weighted evenly), measured on router_mix test and on the held-out sources of
``bench/declared_routing.py``. Hyper-parameters fixed beforehand (the usual BERT fine-tuning
values: AdamW, lr 5e-5, linear warm-up over 6 % of the steps then linear decay, 2 epochs, batch
32, 128 tokens), none tuned on either set.

    .venv/bin/python bench/skills_finetuned_encoder.py --out docs/results/skills_finetuned_encoder

Prints one JSON line (and writes ``results.json`` to ``--out``): accuracy and macro recall on both
sets, the decision time of one query on one core.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from skills_generalization import DOMAINS, data, report  # noqa: E402

from router.encoder import _minilm  # noqa: E402
from training.skills import SNIPPETS, augment  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
logger = logging.getLogger("finetune")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    train, test, held = data()
    train = augment([r for r in train if r["domain"] in DOMAINS], SNIPPETS)
    labels = np.array([DOMAINS.index(r["domain"]) for r in train])
    weights = torch.tensor(len(labels) / (len(DOMAINS) * np.bincount(labels)), dtype=torch.float32)

    folder = _minilm()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = AutoModel.from_pretrained(folder)
    head = torch.nn.Linear(encoder.config.hidden_size, len(DOMAINS))

    def logits(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
        hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return head((hidden * mask).sum(1) / mask.sum(1))

    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)
    steps = args.epochs * -(-len(train) // 32)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    rng = np.random.default_rng(0)
    started, step = time.perf_counter(), 0
    encoder.train()
    for epoch in range(args.epochs):
        order = rng.permutation(len(train))
        for start in range(0, len(train), 32):
            idx = order[start : start + 32]
            loss = loss_fn(logits([train[i]["instruction"] for i in idx]), torch.tensor(labels[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 50 == 0:
                logger.info(
                    "epoch %d step %d/%d loss %.3f (%.0f s)",
                    epoch,
                    step,
                    steps,
                    loss.item(),
                    time.perf_counter() - started,
                )
    encoder.eval()

    def predict(rows: list[dict]) -> list[str]:
        out = []
        with torch.inference_mode():
            for start in range(0, len(rows), 64):
                batch = [r["instruction"] for r in rows[start : start + 64]]
                out += [DOMAINS[k] for k in logits(batch).argmax(1).tolist()]
        return out

    result = {
        "benchmark": "skills_finetuned_encoder",
        "train_queries": len(train),
        "train_s": round(time.perf_counter() - started),
    }
    for name, rows in (("router_mix_test", test), ("held_out_sources", held)):
        result[name] = report([r["domain"] for r in rows], predict(rows))
        logger.info("%s: accuracy %.4f macro %.4f", name, result[name]["accuracy"], result[name]["macro"])
    torch.set_num_threads(1)
    times = []
    with torch.inference_mode():
        for r in test[:200]:
            t = time.perf_counter()
            logits([r["instruction"]])
            times.append(1000 * (time.perf_counter() - t))
    result["decision_ms_p50_one_core"] = round(float(np.median(times)), 2)
    print(json.dumps(result))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
