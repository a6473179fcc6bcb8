"""Instruction data for phase 1 (``--data``) in the common formats: ours, Alpaca, Dolly, OpenAI chat
fine-tuning files, ShareGPT; JSONL, JSON arrays, Parquet; each bad record named."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.generate import load_instructions
from training.instructions import read_instructions

ROWS = [
    ("What is 2 + 2?", "4"),
    ("Summarise the text.\n\nCats sleep a lot.", "Cats sleep."),
    ("Name a prime.", "7"),
]
"""The same three queries with references, as each format below says them."""
FORMATS = {
    "ours.jsonl": [{"id": f"q{i}", "instruction": q, "reference": r} for i, (q, r) in enumerate(ROWS)],
    "alpaca.json": [
        {"instruction": "What is 2 + 2?", "input": "", "output": "4"},
        {"instruction": "Summarise the text.", "input": "Cats sleep a lot.", "output": "Cats sleep."},
        {"instruction": "Name a prime.", "input": "", "output": "7"},
    ],
    "dolly.jsonl": [
        {"instruction": "What is 2 + 2?", "context": "", "response": "4", "category": "open_qa"},
        {"instruction": "Summarise the text.", "context": "Cats sleep a lot.", "response": "Cats sleep."},
        {"instruction": "Name a prime.", "context": "", "response": "7", "category": "open_qa"},
    ],
    "openai_chat.jsonl": [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": q},
                {"role": "assistant", "content": r},
            ]
        }
        for q, r in ROWS
    ],
    "alpaca.csv": [
        {"instruction": "What is 2 + 2?", "input": "", "output": "4"},
        {"instruction": "Summarise the text.", "input": "Cats sleep a lot.", "output": "Cats sleep."},
        {"instruction": "Name a prime.", "input": "", "output": "7"},
    ],
    "sharegpt.json": [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": r}]} for q, r in ROWS
    ],
}


def write(path, records) -> None:
    if path.suffix == ".csv":
        import csv

        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    elif path.suffix == ".json":
        path.write_text(json.dumps(records, indent=1))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_common_format_gives_the_same_queries_and_references(tmp_path, name):
    path = tmp_path / name
    write(path, FORMATS[name])
    table = read_instructions(path)
    assert list(zip(table["query"], table["reference"])) == ROWS
    assert table.query_id.is_unique and set(table.split) == {"train"}
    assert set(table.source) == {name.split(".")[0]}
    if name == "dolly.jsonl":
        assert list(table.domain) == ["open_qa", "", "open_qa"]
    # Derived ids are stable: the same records in another order keep theirs.
    write(path, FORMATS[name][::-1])
    again = read_instructions(path).set_index("query")
    assert dict(again.query_id) == dict(zip(table["query"], table.query_id))


def test_parquet_and_sampling_keep_their_contract(tmp_path):
    records = [
        {"id": f"q{i}", "instruction": f"Question {i}", "reference": "A", "domain": d, "split": "test"}
        for i, d in enumerate(["math", "code"] * 10)
    ]
    write(tmp_path / "data.parquet", records)
    picked = load_instructions(tmp_path / "data.parquet", limit_per_domain=3, seed=1)
    assert sorted(picked.domain.value_counts().to_dict().items()) == [("code", 3), ("math", 3)]
    assert set(load_instructions(tmp_path / "data.parquet", limit_per_domain=2, seed=1).query_id) < set(
        picked.query_id
    )
    assert set(picked.split) == {"test"}


def test_the_shared_mix_loads_whole_with_its_own_columns():
    """router_mix.jsonl.gz as it is: every record (one holds U+2028 and one U+2029 inside a JSON
    string: lines break at newlines only), its ids, splits and sources."""
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "router_mix.jsonl.gz"
    if not path.exists():
        pytest.skip("shared datasets not found beside the repository")
    table = read_instructions(path)
    assert len(table) == 11905 and table.query_id.is_unique
    assert table.split.value_counts().to_dict() == {"train": 9405, "test": 2500}
    assert table.source.nunique() == 17 and "\u2028" in "".join(table["query"]) + "".join(table.reference)


def test_other_shapes_real_datasets_have(tmp_path):
    records = [
        {"question": "What is 2 + 2?", "answer": 4},  # a numeric answer
        {  # a prompt beside the conversation that holds the answer (UltraChat, No Robots)
            "prompt": "Name a prime.",
            "messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
        },
        {"instruction": "Say hi\u2028twice.", "output": "hi\u2029hi"},  # line separators inside strings
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Parts?"}]},
                {"role": "assistant", "content": "Yes."},
            ]
        },
    ]
    write(tmp_path / "data.jsonl", records)
    table = read_instructions(tmp_path / "data.jsonl")
    assert list(zip(table["query"], table.reference)) == [
        ("What is 2 + 2?", "4"),
        ("Name a prime.", "7"),
        ("Say hi\u2028twice.", "hi\u2029hi"),
        ("Parts?", "Yes."),
    ]


@pytest.mark.parametrize(
    "line, error",
    [
        (
            {"instruction": "hi"},
            "lacks a reference answer (reference/output/response/answer/completion); its fields: instruction",
        ),
        ({"output": "hi"}, "lacks a query (instruction/prompt/question/query, or messages/conversations)"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "its answer as the last turn"),
        (
            {"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]},
            "a user turn",
        ),
        ({"instruction": ["a"], "output": "b"}, "must be strings"),
        ({"instruction": [{"type": "image_url"}], "input": "context", "output": "b"}, "must be strings"),
        ([1, 2], "not a JSON list"),
        ({"messages": 5}, "messages must be a list, not a JSON int"),
        (
            {"instruction": "a", "output": "b", "split": "validation"},
            "split 'validation': one of train, test",
        ),
    ],
)
def test_a_bad_record_is_named_with_what_it_lacks(tmp_path, line, error):
    path = tmp_path / "data.jsonl"
    write(path, [{"instruction": "ok", "output": "fine"}, line])
    with pytest.raises(ValueError, match="data.jsonl:2: .*" + error.replace("(", r"\(").replace(")", r"\)")):
        read_instructions(path)


def test_text_files_repeats_and_clashing_ids(tmp_path):
    (tmp_path / "q.txt").write_text("What is 2 + 2?\n")
    with pytest.raises(ValueError, match="q.txt:1: a line of text"):
        read_instructions(tmp_path / "q.txt")
    path = tmp_path / "data.jsonl"
    write(path, [{"instruction": "a", "output": "b"}] * 2 + [{"instruction": "c", "output": "d"}])
    assert list(read_instructions(path)["query"]) == ["a", "c"]  # the repeat is one query
    write(
        path, [{"id": "x", "instruction": "a", "output": "b"}, {"id": "x", "instruction": "c", "output": "d"}]
    )
    with pytest.raises(ValueError, match="ids used by different records: x"):
        read_instructions(path)


@pytest.mark.parametrize("command", ["generate", "pipeline"])
def test_phase1_commands_refuse_bad_data_or_config_before_starting_ray(
    tmp_path, capsys, monkeypatch, command
):
    from tests.conftest import REPO
    from training import cli
    from training.cli import main

    def no_ray() -> None:
        raise AssertionError("Ray was started before the inputs were checked")

    monkeypatch.setattr(cli, "_connect_ray", no_ray)

    bad = tmp_path / "data.jsonl"
    bad.write_text('{"instruction": "What is 2 + 2?"}\n')
    for argv, says in (
        (
            ["--config", str(REPO / "configs/tiny_cpu.yaml"), "--data", str(bad)],
            "data.jsonl:1: lacks a reference",
        ),
        (["--config", str(tmp_path / "none.yaml"), "--data", str(bad)], "none.yaml"),
    ):
        with pytest.raises(SystemExit) as stop:
            main([command, *argv, "--out", str(tmp_path / "out")])
        assert stop.value.code == 2 and says in capsys.readouterr().err


def test_bad_records_can_be_left_out_with_a_warning_naming_them(tmp_path, caplog):
    path = tmp_path / "sharegpt.json"
    conversations = [
        [{"from": "human", "value": "Name a prime."}, {"from": "gpt", "value": "7"}],
        [{"from": "human", "value": "Unanswered?"}],  # ends on the human turn
        [{"from": "human", "value": "Who are you?"}, {"from": "bing", "value": "A search engine."}],
    ]
    write(path, [{"conversations": c} for c in conversations])
    with pytest.raises(ValueError, match="sharegpt.json:2: a conversation needs its answer as the last turn"):
        read_instructions(path)
    with caplog.at_level("WARNING"):
        table = read_instructions(path, skip_bad=True)
    assert list(table["query"]) == ["Name a prime.", "Who are you?"]
    assert "1 bad records left out" in caplog.text and "sharegpt.json:2:" in caplog.text
    write(path, [{"conversations": conversations[1]}])
    with pytest.raises(ValueError, match="sharegpt.json:1:"):  # nothing good: still an error
        read_instructions(path, skip_bad=True)
