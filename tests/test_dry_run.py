"""``expert-router route``: a file of queries routed by the config's policy, without Ray or engines."""

from __future__ import annotations

import gzip
import json

import pytest
import yaml

from training.cli import main

EXPERTS = [
    {"name": "general", "model": "m", "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}},
    {"name": "math", "model": "m", "price": {"input_per_1m": 4.0, "output_per_1m": 8.0}},
    {
        "name": "remote",
        "model": "m",
        "endpoint": {"base_url": "http://127.0.0.1:9/v1"},
        "capabilities": ["tools"],
    },
]


def write_config(path, **app):
    args = {
        "experts": EXPERTS,
        "policy": {"name": "fixed", "args": {"expert": "math"}},
        "ingress": {"security": {"max_message_chars": 200}},
    }
    path.write_text(
        yaml.safe_dump({"applications": [{"name": "app", "import_path": "x:y", "args": args, **app}]})
    )
    return path


@pytest.fixture
def config(tmp_path):
    """A serve config whose fixed policy puts math first."""
    return write_config(tmp_path / "serve.yaml")


def test_a_live_rollout_s_policy_is_the_one_the_dry_run_uses(tmp_path, capsys):
    """The ingress deployment's user_config policy is what the replicas route by (README: rollouts)."""
    rollout = {
        "deployments": [
            {"name": "ingress", "user_config": {"policy": {"name": "fixed", "args": {"expert": "general"}}}}
        ]
    }
    path = write_config(tmp_path / "serve.yaml", **rollout)
    queries = tmp_path / "q.txt"
    queries.write_text("2+2?\n")
    records, _ = route(capsys, path, queries)
    assert records[0]["expert"] == "general"


def test_a_rollout_naming_the_old_deployment_is_an_error_naming_the_new_one(tmp_path, capsys):
    """Serve refuses a deployments entry the app lacks; the dry run says so first, and how to fix it."""
    rollout = {"deployments": [{"name": "router", "user_config": {"policy": {"name": "random"}}}]}
    path = write_config(tmp_path / "serve.yaml", **rollout)
    queries = tmp_path / "q.txt"
    queries.write_text("2+2?\n")
    with pytest.raises(SystemExit) as stop:
        main(["route", "--config", str(path), "--queries", str(queries)])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and "'ingress'" in err and out == "", err


def route(capsys, config, path, *extra) -> tuple[list[dict], str]:
    main(["route", "--config", str(config), "--queries", str(path), *extra])
    out, err = capsys.readouterr()
    return [json.loads(line) for line in out.splitlines()], err


def test_every_format_routes_each_line_through_the_policy_with_its_own_routing_options(
    tmp_path, capsys, config
):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    lines = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]},
        {"instruction": "Name a prime.", "reference": "7", "domain": "math"},
        {"messages": [{"role": "user", "content": "hi"}], "routing": {"experts": ["general", "remote"]}},
        {"messages": [{"role": "user", "content": "call f"}], "tools": tools, "tool_choice": "auto"},
    ]
    jsonl = tmp_path / "traffic.jsonl.gz"
    with gzip.open(jsonl, "wt") as f:
        f.write("\n".join(json.dumps(line) for line in lines) + "\n")
    records, _ = route(capsys, config, jsonl, "--summary")
    *records, summary = records
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert [r["expert"] for r in records] == ["math", "math", "general", "remote"]  # allowed, capable
    assert records[0]["ranking"] == ["math", "general", "remote"] and set(records[0]["scores"]) == {
        "general",
        "math",
        "remote",
    }
    assert records[2]["ranking"] == ["general", "remote"]
    assert summary["summary"]["count"] == {"general": 1, "math": 2, "remote": 1}
    assert summary["summary"]["share"]["math"] == 0.5
    # math's prices at ~4 characters a token in, max_tokens (256) out
    assert records[1]["cost_usd"] == pytest.approx((4 * 4 + 8 * 256) / 1e6)
    assert summary["summary"]["expected_cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records))

    text = tmp_path / "queries.txt"
    text.write_text("What is 2+2?\n\n  \nWho wrote Hamlet?\n")
    records, err = route(capsys, config, text)
    assert [(r["line"], r["expert"]) for r in records] == [(1, "math"), (4, "math")]
    assert "2 blank lines are not queries" in err


def test_json_parquet_sharegpt_and_other_query_fields_route_as_their_text_does(tmp_path, capsys, config):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["What is 17 times 23?", "Who wrote Hamlet?", "Solve for x: 3x + 5 = 20.", "Name a river."]
    (tmp_path / "q.txt").write_text("\n".join(texts) + "\n")
    expected = [r["expert"] for r in route(capsys, config, tmp_path / "q.txt")[0]]
    records = [
        {"prompt": texts[0]},
        {"question": texts[1], "answer": "Shakespeare"},
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": texts[2]}]},
        {"query": texts[3]},
    ]
    (tmp_path / "q.json").write_text(json.dumps(records, indent=2))
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    pq.write_table(pa.table({"query": texts}), tmp_path / "q.parquet")
    (tmp_path / "q.log").write_text(json.dumps(records))  # no known suffix: a JSON array by its content
    (tmp_path / "lines.log").write_text(
        "".join(json.dumps(r) + "\n" for r in records)
    )  # JSONL by its content
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "q.jsonl").read_bytes())
    cells = [f'"{t}"' for t in texts]  # quoted: a comma or a line break inside stays in its cell
    (tmp_path / "q.csv").write_text("id,prompt\n" + "".join(f"{i},{c}\n" for i, c in enumerate(cells)))
    (tmp_path / "q.tsv").write_text("question\tanswer\n" + "".join(f"{t}\t-\n" for t in texts))
    for name in ("q.json", "q.jsonl", "q.parquet", "q.log", "lines.log", "bom.jsonl", "q.csv", "q.tsv"):
        routed = route(capsys, config, tmp_path / name)[0]
        assert [(r["line"], r["expert"]) for r in routed] == list(enumerate(expected, start=1)), name
    (tmp_path / "one.json").write_text(
        json.dumps({"messages": [{"role": "user", "content": texts[0]}]}, indent=2)
    )
    assert [r["expert"] for r in route(capsys, config, tmp_path / "one.json")[0]] == expected[:1]
    batch = [  # an OpenAI Batch API input file: chat and text completion requests under "body"
        {
            "custom_id": f"request-{i}",
            "method": "POST",
            "url": "/v1/chat/completions" if i % 2 == 0 else "/v1/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 64,
            }
            if i % 2 == 0
            else {"model": "gpt-4o-mini", "prompt": text},
        }
        for i, text in enumerate(texts)
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    batch[0]["body"]["tools"] = tools  # the body's request fields count: only `remote` has tools
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(r) + "\n" for r in batch))
    routed = route(capsys, config, tmp_path / "batch.jsonl")[0]
    assert [(r["line"], r["expert"]) for r in routed] == [(1, "remote"), *enumerate(expected[1:], start=2)]


@pytest.mark.parametrize(
    "content, error",
    [
        ('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [\n', ":2: not valid JSON"),
        ("[1, 2]\n", ":1: a query is a string or a JSON object, not a JSON list"),
        ('{"answer": "hi"}\n', ":1: no query: an object needs 'messages' (OpenAI chat form)"),
        ('{"conversations": [{"from": "robot", "value": "x"}]}\n', "conversations: unknown speaker 'robot'"),
        ('{"conversations": "hi"}\n', ":1: 'conversations' must be a list of {from, value} objects"),
        ('{"prompt": ["a", "b"]}\n', ":1: no query"),
        ('{"messages": 5}\n', ":1: messages: Input should be a valid list"),
        (
            '{"messages": [{"role": "wizard", "content": "x"}]}\n',
            ":1: messages[0].role: 'wizard' is not one of",
        ),
        (
            '{"messages": [{"role": "system", "content": "x"}]}\n',
            ":1: messages: must contain at least one non-empty user message",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}]}\n'
            '{"messages": [{"role": "user", "content": "x"}], "routing": {"experts": ["nobody"]}}\n',
            ":2: routing.experts: unknown experts ['nobody']",
        ),
        (
            '{"messages": [{"role": "user", "content": "x"}], "routing": {"experts": ["math"]}, "tools": '
            '[{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}\n',
            ":1: this request needs tools, which no candidate expert is configured for",
        ),
        ("\n\n", "no queries"),
        ('{"instruction": "' + "x" * 300 + '"}\n', ":1: messages: a message has 300 characters; at most 200"),
        (
            '{"instruction": "hi", "routing": {"experts": ["nobody"]}}\n',
            ":1: routing.experts: unknown experts",
        ),
        (b"\xff\xfe not utf-8\n", "cannot read it"),
    ],
)
def test_a_bad_file_is_an_error_naming_the_line_and_nothing_is_routed(
    tmp_path, capsys, config, content, error
):
    path = tmp_path / "traffic.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SystemExit) as stop:
        main(["route", "--config", str(config), "--queries", str(path)])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and error in err and out == "", err  # checked before anything is routed


def test_every_bad_line_is_listed(tmp_path, capsys, config):
    path = tmp_path / "traffic.jsonl"
    path.write_text("".join(f'{{"messages": {n}}}\n' for n in range(30)))
    with pytest.raises(SystemExit):
        main(["route", "--config", str(config), "--queries", str(path)])
    err = capsys.readouterr().err
    assert ":20: messages" in err and ":21: messages" not in err and "and 10 more bad lines" in err


def test_a_missing_file_or_config_is_a_clear_error(tmp_path, capsys, config):
    for argv in (
        ["--config", str(config), "--queries", str(tmp_path / "none.txt")],
        ["--config", str(tmp_path / "none.yaml"), "--queries", str(config)],
    ):
        with pytest.raises(SystemExit) as stop:
            main(["route", *argv])
        assert stop.value.code == 2 and "none." in capsys.readouterr().err
