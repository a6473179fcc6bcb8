"""Does a domain classifier learn the domain or the format? Train on router_mix's train split, measure
on its test split and on sources and formats the training never saw.

The five domains (general, math, code, biomedical, science) are the builtin skills experts will
declare (issue 25). Training data: router_mix train only. Held out: every record of each source
router_mix never trains on (MedQA-USMLE and MMLU medical: multiple-choice; HumanEval: code
snippets; AlpacaEval: chat prompts; MT-Bench: short prompts of every domain), scored per domain and
macro-averaged over the domains present. Every configuration runs; each classifier's C is chosen
by 3 inner folds of the training split only. Prints one JSON line (per configuration: accuracy,
per-domain recall, macro, confusion matrix) and writes it with a plot to ``--out``.

    .venv/bin/python bench/skills_generalization.py --out docs/results/skills_generalization
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import SHARED_DATA  # noqa: E402
from training.skills import without_options  # noqa: E402

DOMAINS = ["biomedical", "code", "general", "math", "science"]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.open(path, "rt")]


def data() -> tuple[list[dict], list[dict], list[dict]]:
    mix = read(SHARED_DATA / "router_mix.jsonl.gz")
    train = [r for r in mix if r["split"] == "train"]
    seen = {(r["source"], r["domain"]) for r in train}
    held = []
    for path in sorted((SHARED_DATA / "normalized").glob("*.jsonl.gz")):
        if path.name.startswith("arena_hard"):
            continue  # labelled general by source though many prompts are code (SOURCES.md)
        held += [r for r in read(path) if (r["source"], r["domain"]) not in seen and r["domain"] in DOMAINS]
    return train, [r for r in mix if r["split"] == "test"], held


def report(truth: list[str], predicted: list[str]) -> dict:
    present = [d for d in DOMAINS if d in truth]
    recall = {
        d: round(sum(t == p == d for t, p in zip(truth, predicted)) / truth.count(d), 4) for d in present
    }
    confusion = {
        d: {e: sum(t == d and p == e for t, p in zip(truth, predicted)) for e in DOMAINS} for d in present
    }
    return {
        "n": len(truth),
        "per_domain_n": {d: truth.count(d) for d in present},
        "accuracy": round(sum(t == p for t, p in zip(truth, predicted)) / len(truth), 4),
        "macro": round(float(np.mean(list(recall.values()))), 4),
        "recall": recall,
        "confusion": confusion,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-encoder", action="store_true", help="skip the MiniLM configurations")
    args = parser.parse_args()
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_union

    train, test, held = data()
    sets = {"router_mix_test": test, "held_out_sources": held}
    y = [r["domain"] for r in train]

    def words() -> TfidfVectorizer:
        return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000)

    def chars() -> TfidfVectorizer:
        return TfidfVectorizer(
            analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True, max_features=300_000
        )

    embeddings: dict[str, np.ndarray] = {}

    def encoder(texts: list[str]) -> np.ndarray:
        from router.encoder import embed, set_inference_threads

        set_inference_threads(2)
        todo = [t for t in dict.fromkeys(texts) if t not in embeddings]
        for start in range(0, len(todo), 256):
            chunk = todo[start : start + 256]
            embeddings.update(zip(chunk, embed(chunk, quantize="int8")))
        return np.stack([embeddings[t] for t in texts])

    def sparse(vectorizer_factory, normalise):
        def fit_transform(texts_train, texts_by_set):
            prep = without_options if normalise else (lambda t: t)
            vectorizer = vectorizer_factory()
            x = vectorizer.fit_transform([prep(t) for t in texts_train])
            return x, {k: vectorizer.transform([prep(t) for t in v]) for k, v in texts_by_set.items()}

        return fit_transform

    def dense(normalise, with_words=False):
        def fit_transform(texts_train, texts_by_set):
            prep = without_options if normalise else (lambda t: t)
            x = encoder([prep(t) for t in texts_train])
            out = {k: encoder([prep(t) for t in v]) for k, v in texts_by_set.items()}
            if not with_words:
                return x, out
            vectorizer = words()
            xw = vectorizer.fit_transform([prep(t) for t in texts_train])
            return hstack([xw, x]).tocsr(), {
                k: hstack([vectorizer.transform([prep(t) for t in texts_by_set[k]]), out[k]]).tocsr()
                for k in out
            }

        return fit_transform

    configurations = {
        "tfidf_words": sparse(words, False),
        "tfidf_words_no_options": sparse(words, True),
        "tfidf_words_chars_no_options": sparse(lambda: make_union(words(), chars()), True),
    }
    if not args.no_encoder:
        configurations |= {
            "minilm": dense(False),
            "minilm_no_options": dense(True),
            "minilm_and_words_no_options": dense(True, with_words=True),
        }
    results = {}
    texts_by_set = {k: [r["instruction"] for r in v] for k, v in sets.items()}
    for name, fit_transform in configurations.items():
        started = time.perf_counter()
        x, xs = fit_transform([r["instruction"] for r in train], texts_by_set)
        model = LogisticRegressionCV(Cs=[0.3, 1, 3, 10, 30], cv=3, max_iter=2000, n_jobs=1).fit(x, y)
        results[name] = {
            "C": float(model.C_[0]),
            **{k: report([r["domain"] for r in sets[k]], list(model.predict(xs[k]))) for k in sets},
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(
            name,
            {k: (results[name][k]["accuracy"], results[name][k]["macro"]) for k in sets},
            file=sys.stderr,
            flush=True,
        )
    out = {
        "benchmark": "skills_generalization",
        "train": len(train),
        "sets": {k: len(v) for k, v in sets.items()},
        "held_out_sources": sorted({r["source"] for r in held}),
        "configurations": results,
    }
    print(json.dumps(out))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(out, indent=1))
        plot(results, args.out / "accuracy.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, (key, label) in enumerate(
        (("router_mix_test", "router_mix test: accuracy"), ("held_out_sources", "held-out sources: macro"))
    ):
        values = [results[n][key]["accuracy" if i == 0 else "macro"] for n in names]
        ax.barh(np.arange(len(names)) + 0.4 * i, values, height=0.4, label=label)
    ax.set_yticks(np.arange(len(names)) + 0.2, names)
    ax.axvline(0.93, color="gray", linestyle=":")
    ax.axvline(0.85, color="gray", linestyle="--")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    ax.set_title("Trained on router_mix train; goals 0.93 (dotted), 0.85 (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
