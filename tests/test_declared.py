"""Policy ``declared``: experts routed by the skills, examples or description they declare, with
the shipped skills model (artifacts/skills), no phase-1 data."""

from __future__ import annotations

import json

import pytest

from deployments.config import EXPERT, AppConfig, ExpertConfig
from router.config import ConfigError, PolicyConfig
from router.policy import Message, RouteRequest, build_policy

MODEL = "builtin:tiny"


def experts(*declared: dict) -> list[ExpertConfig]:
    return [EXPERT.validate_python({"model": MODEL, **d}) for d in declared]


def policy(team: list[ExpertConfig], **args):
    return build_policy(PolicyConfig(name="declared", args=args), team)


def first(p, text: str, **kw) -> str:
    return p.route([Message("user", text)], **kw).expert


TEAM = experts(
    {"name": "general", "skills": ["general"]},
    {"name": "math", "skills": ["math"]},
    {"name": "code", "skills": ["code"]},
    {"name": "biomedical", "skills": ["biomedical"]},
)
CLEAR = {
    "general": ["Who wrote Hamlet?", "Give me a tip for learning French.", "What is the capital of Peru?"],
    "math": ["Solve for x: 3x + 5 = 20", "What is the derivative of x^3 + 2x?"],
    "code": ["Write a Python function that reverses a linked list.", "Fix this SQL query: SELEC * FROM t"],
    "biomedical": ["What are the side effects of metformin?", "What causes type 2 diabetes?"],
}


def test_experts_declaring_skills_get_the_queries_of_those_skills():
    p = policy(TEAM)
    for expert, queries in CLEAR.items():
        for query in queries:
            decision = p.route([Message("user", query)])
            assert decision.expert == expert, (query, decision.scores)
            assert 0.0 <= min(decision.scores.values()) <= max(decision.scores.values()) <= 1.0


def test_a_batch_decides_as_one_query_at_a_time_and_keeps_each_requests_candidates():
    p = policy(TEAM)
    queries = [q for qs in CLEAR.values() for q in qs]
    requests = [
        RouteRequest([Message("user", q)], ["general", "code"] if i % 2 else None)
        for i, q in enumerate(queries)
    ]
    batch = p.route_batch(requests)
    for request, decision in zip(requests, batch):
        alone = p.route(request.messages, request.candidates)
        assert decision.ranking == alone.ranking
        assert decision.scores == pytest.approx(alone.scores, abs=1e-5)
        assert set(decision.ranking) == set(request.candidates or p.experts)


def test_examples_route_like_queries_to_an_expert_from_a_list_or_any_file(tmp_path):
    examples = [
        "Translate 'good morning' into Spanish.",
        "How do you say 'thank you' in Japanese?",
        "Translate this sentence into German: the cat sleeps.",
    ]
    query = "Translate 'where is the station' into French."
    (tmp_path / "q.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                examples[0],
                {"instruction": examples[1]},
                {"messages": [{"role": "user", "content": [{"type": "text", "text": examples[2]}]}]},
                {"messages": None, "prompt": examples[0]},
            ]
        )
    )
    (tmp_path / "q.txt").write_text("\n".join(examples) + "\n\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"query": examples}), tmp_path / "q.parquet")
    for source in (examples, str(tmp_path / "q.jsonl"), str(tmp_path / "q.txt"), str(tmp_path / "q.parquet")):
        team = experts({"name": "general", "skills": ["general"]}, {"name": "translator", "examples": source})
        p = policy(team)
        assert first(p, query) == "translator", source
        assert first(p, "Who wrote Hamlet?") == "general"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instruction": "a"}\nnot json\n', "line 2: not valid JSON"),
        ('{"answer": "no query here"}\n', "line 1: no query: an object needs 'messages'"),
        ("[1, 2]\n", "line 1: a query is a string or a JSON object, not a JSON list"),
        ('{"messages": [{"role": "system", "content": "x"}]}\n', "line 1: no user message with text"),
        ('{"messages": 5}\n', "line 1: messages must be a list, not a JSON int"),
    ],
)
def test_a_bad_examples_file_is_a_clear_error_naming_its_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        policy(experts({"name": "a", "skills": ["general"]}, {"name": "b", "examples": str(path)}))
    with pytest.raises(ValueError, match="does not exist"):
        policy(experts({"name": "a", "examples": str(tmp_path / "missing.jsonl")}))


def test_a_description_alone_routes_zero_shot():
    team = experts(
        {"name": "general", "skills": ["general"]},
        {"name": "coder", "description": "Writing and debugging computer programs in Python and JavaScript."},
    )
    p = policy(team)
    assert first(p, "Write a JavaScript function that debounces another function.") == "coder"
    assert first(p, "Who painted the Mona Lisa?") == "general"


def test_a_long_text_full_of_numbers_does_not_match_short_arithmetic_examples():
    # Similarity is on embeddings centred on the training queries' mean: uncentred, a clinical
    # vignette with lab values was as close to "What is 12 times 4?" as a math question is.
    team = experts(
        {"name": "general", "skills": ["general"], "default": True},
        {
            "name": "math",
            "examples": ["What is 12 times 4?", "Solve for x in 2x + 6 = 14.", "What is 15% of 80?"],
        },
    )
    p = policy(team)
    vignette = (
        "A 45-year-old man presents with 3 days of fever of 38.9 C, pulse 112/min, blood pressure "
        "94/60 mm Hg and a leukocyte count of 18,500/mm3. His serum creatinine is 2.1 mg/dL and "
        "lactate 4.2 mmol/L. Which of the following is the most appropriate next step in management?"
    )
    assert first(p, vignette) == "general"
    assert first(p, "What is 36 times 7?") == "math"


def test_training_adds_each_question_in_the_other_format_and_code_answers_as_code_queries():
    from training.skills import augment, is_multiple_choice

    rows = [
        {
            "instruction": "Which vitamin prevents scurvy?\nA. A\nB. C\nC. D\nD. K",
            "domain": "biomedical",
            "reference": "B. C",
        },
        *(
            {"instruction": f"What is {i} + {i}?", "domain": "math", "reference": str(2 * i)}
            for i in range(30)
        ),
    ]
    extra = augment(rows, "options added and removed")[len(rows) :]
    assert extra[0]["instruction"] == "Which vitamin prevents scurvy?"
    assert all(is_multiple_choice(r["instruction"]) and r["domain"] == "math" for r in extra[1:])
    assert augment(rows, "none") == rows
    program = "def add(a, b):\n    return a + b"
    coding = [
        {"instruction": "Write a function adding two numbers.", "domain": "code", "reference": program},
        {"instruction": "What is a closure?", "domain": "code", "reference": "A function with its scope."},
    ]
    snippets = augment(rows + coding, "code snippets")[len(rows) + 2 :]
    assert [(r["instruction"], r["domain"]) for r in snippets] == [(program, "code")]
    both = augment(rows + coding, "code snippets, options added and removed")
    assert len(both) == 2 * len(rows + coding) + 1
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment(rows, "paraphrase")


def test_model_choice_folds_hold_out_whole_sources_and_score_every_skill():
    import numpy as np

    from training.skills import unseen_source_folds

    rows = [
        {"domain": domain, "source": source}
        for domain, source, n in [
            ("general", "dolly", 30),
            ("math", "gsm8k", 5),
            ("math", "math", 5),
            ("math", "theorems", 5),
            ("code", "mbpp", 5),
            ("code", "alpaca", 5),
        ]
        for _ in range(n)
    ]
    folds = unseen_source_folds(rows)
    held = np.concatenate(folds)
    assert len(held) == len(set(held.tolist())) == len(rows)  # each row held out once
    for fold in folds:
        sources = {rows[i]["source"] for i in fold}
        for source in sources - {"dolly"}:  # multi-source domains: whole sources
            assert sum(rows[i]["source"] == source for i in fold) == 5
        assert {"math", "code"} & {rows[i]["domain"] for i in fold}
        assert any(rows[i]["domain"] == "general" for i in fold)  # the one-source skill is scored


def test_the_build_chooses_how_many_nearest_examples_a_match_averages():
    """With examples as noisy as these, averaging more of them separates the kinds better; the build
    measures that across sources and takes the best count."""
    import numpy as np

    from training.skills import NEAREST_CHOICES, SKILLS, choose_nearest

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(len(SKILLS), 32))
    rows, vectors = [], []
    for s, skill in enumerate(SKILLS):
        for source in ("a", "b"):
            for _ in range(20):
                rows.append({"domain": skill, "source": f"{skill}-{source}"})
                vectors.append(centres[s] + 3.0 * rng.normal(size=32))
    embedded = np.array(vectors) / np.linalg.norm(vectors, axis=1, keepdims=True)
    chosen, auc = choose_nearest(rows, embedded)
    assert set(auc) == {str(k) for k in NEAREST_CHOICES}
    assert auc[str(chosen)] == max(auc.values()) and chosen > 1
    assert auc[str(chosen)] > auc["1"]


def test_training_adds_each_longer_question_again_with_most_of_its_words_dropped():
    from training.skills import DROPPED_COPIES, augment

    long = "Natalia sold clips to 48 of her friends in April and half as many in May. How many in all?"
    rows = [
        {"instruction": long, "domain": "math", "reference": "72"},
        {"instruction": "Who wrote Hamlet?", "domain": "general", "reference": "Shakespeare"},
    ]
    extra = augment(rows, "words dropped")[len(rows) :]
    assert len(extra) == DROPPED_COPIES and {r["domain"] for r in extra} == {"math"}
    assert sum(r["weight"] for r in extra) == pytest.approx(1.0)  # together, as much as the query
    words = long.split()
    for row in extra:
        kept = row["instruction"].split()
        assert 3 <= len(kept) <= len(words) // 2
        position = iter(words)  # the kept words in their order
        assert all(word in position for word in kept)
    assert augment(rows, "words dropped") == augment(rows, "words dropped")  # seeded


def test_a_query_that_matches_nothing_declared_goes_to_the_default_expert_and_says_so():
    team = experts(
        {"name": "math", "skills": ["math"]},
        {"name": "cheap", "skills": ["general"], "price": {"input_per_1m": 0.1}},
        {"name": "dear", "skills": ["general"], "price": {"input_per_1m": 1.0}},
        {"name": "doctor", "skills": ["biomedical"]},
    )
    p = policy(team)
    code = [Message("user", "Write a Python function that reverses a linked list.")]
    decision = p.route(code, ["math", "doctor", "dear", "cheap"])
    # No one declared code: the cheapest expert declaring general takes it, first also after
    # load-aware re-ranking (its score is raised over the others'), and the decision says why.
    assert decision.expert == "cheap" and "default expert 'cheap'" in decision.note
    assert decision.scores["cheap"] == max(decision.scores.values())
    assert p.route(code, ["math", "doctor"]).note is None  # the default is not a candidate
    marked = policy(experts({"name": "math", "skills": ["math"]}, {"name": "helper", "default": True}))
    assert first(marked, "Write a Python function that reverses a linked list.") == "helper"
    assert first(marked, "Solve for x: 3x + 5 = 20") == "math"


def test_cost_weight_prefers_the_cheaper_of_experts_declaring_the_same_skill():
    team = experts(
        {"name": "dear", "skills": ["math"], "price": {"input_per_1m": 5, "output_per_1m": 15}},
        {"name": "cheap", "skills": ["math"], "price": {"input_per_1m": 0.1, "output_per_1m": 0.2}},
    )
    p = policy(team)
    question = [Message("user", "Solve for x: 3x + 5 = 20")]
    assert p.route(question).ranking == ("dear", "cheap")  # equal scores: config order
    assert p.route(question, cost_weight=0.5).expert == "cheap"
    assert policy(team, cost_weight=0.5).route(question).expert == "cheap"


def test_declare_changes_what_experts_declare_without_touching_their_config():
    team = experts({"name": "general", "skills": ["general"]}, {"name": "new"})
    query = "Translate 'good morning' into Spanish."
    assert first(policy(team), query) == "general"
    updated = policy(team, declare={"new": {"examples": ["Translate 'thank you' into Italian."]}})
    assert first(updated, query) == "new"
    with pytest.raises(ValueError, match="no such expert: ghost"):
        policy(team, declare={"ghost": {"skills": ["math"]}})
    with pytest.raises(ValueError):
        policy(team, declare={"new": {"skills": ["astrology"]}})


def test_an_outcome_router_adds_to_declared_expertise_and_a_new_expert_is_still_routed_to():
    """artifacts/default learned general vs math outcomes; a code expert it never saw still gets code
    queries by what it declares, and the outcome router moves only the experts it scores."""
    team = experts(
        {"name": "general", "skills": ["general"]},
        {"name": "math", "skills": ["math"]},
        {"name": "code", "skills": ["code"]},
    )
    combined = policy(team, outcomes="artifacts/default")
    declared = policy(team)
    assert combined.outcomes.unscored == ("code",)
    for query in [
        "Write a Python function that reverses a linked list.",
        "Fix this SQL query: SELEC * FROM t",
    ]:
        assert first(combined, query) == "code"
    for query in ["Solve for x: 3x + 5 = 20", "Who wrote Hamlet?"]:
        both, alone = combined.route([Message("user", query)]), declared.route([Message("user", query)])
        assert both.scores["code"] == pytest.approx(alone.scores["code"])
        shift = both.scores["general"] - alone.scores["general"]
        assert shift == pytest.approx(-(both.scores["math"] - alone.scores["math"]), abs=1e-5)
    assert combined.expected_costs().keys() == {"general", "math"}
    with pytest.raises(FileNotFoundError):
        policy(team, outcomes="artifacts/none")


def test_declarations_are_validated_with_the_config():
    base = {"experts": [{"name": "a", "model": MODEL}], "policy": {"name": "declared"}}
    with pytest.raises(ConfigError, match=r"experts\[0\]\.skills\[0\]"):
        AppConfig.parse({**base, "experts": [{"name": "a", "model": MODEL, "skills": ["astrology"]}]})
    with pytest.raises(ConfigError, match="at most one expert may be the default"):
        AppConfig.parse(
            {**base, "experts": [{"name": n, "model": MODEL, "default": True} for n in ("a", "b")]}
        )
    with pytest.raises(ValueError, match="needs the experts' configs"):
        build_policy(PolicyConfig(name="declared"), ["a"])


def test_a_skills_model_with_max_pooling_reads_its_further_block_after_the_mean(tmp_path):
    """A model built with ``max_pooling`` (a feature set the build may be asked for) scores the
    max-pooled embedding with the classifier's columns after the mean's: with those columns zero,
    its probabilities are the mean-only model's."""
    import shutil

    import numpy as np

    from router.skills import DEFAULT_ARTIFACT, META_FILE, SkillModel

    folder = shutil.copytree(DEFAULT_ARTIFACT, tmp_path / "skills")
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps(meta | {"max_pooling": True}))
    weights = np.load(folder / "classifier.npz")
    coef = np.hstack([weights["coef"], np.zeros_like(weights["coef"])])
    np.savez(folder / "classifier.npz", coef=coef, intercept=weights["intercept"])
    texts = [q for qs in CLEAR.values() for q in qs]
    shipped, pooled = SkillModel(), SkillModel(folder)
    embedded, blocks = pooled.features(texts)
    assert [b.shape for b in blocks] == [embedded.shape]
    assert np.allclose(np.linalg.norm(blocks[0], axis=1), 1.0, atol=1e-5)
    assert np.allclose(
        pooled.skill_probabilities(embedded, blocks),
        shipped.skill_probabilities(*shipped.features(texts)),
        atol=1e-6,
    )
