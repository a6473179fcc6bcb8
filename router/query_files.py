"""Files of queries: one reader for what users hand the router as queries, an expert's example
queries (``examples: <file>``) and the traffic of a dry run (``expert-router route --queries``).

Formats (``auto`` picks by the name, then by the first character): JSONL (``.jsonl``,
``.ndjson``: a record a line), JSON (``.json``: an array of records, one record, or JSONL), Parquet
(``.parquet``: a record a row) and plain text (a query a line); all but Parquet may be gzipped
(``.gz``). A record is a query as a string, or an object with a conversation (OpenAI ``messages``,
or ShareGPT ``conversations`` of ``from``/``value`` turns) or a query under one of
:data:`TEXT_KEYS`.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("auto", "jsonl", "json", "parquet", "text")
BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "text"}
TEXT_KEYS = ("instruction", "query", "prompt", "question", "text")
"""Fields that hold a record's query when it has no conversation, in the order they are looked for."""
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class Unreadable:
    """A line or item that is not a record (bad JSON): the reader's caller says so, naming it."""

    reason: str


def file_format(path: Path, fmt: str = "auto") -> str:
    """The format of ``path``: ``fmt`` unless ``auto``, else by the name, else by the content."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    name = path.name.removesuffix(".gz")
    if (suffix := Path(name).suffix) in BY_SUFFIX:
        return BY_SUFFIX[suffix]
    first = next((line.lstrip() for line in _lines(path) if line.strip()), "")
    return "json" if first.startswith("[") else "jsonl" if first.startswith("{") else "text"


def _lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig") as lines:  # a byte-order mark is not text
        return [line.rstrip("\r\n") for line in lines]


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return Unreadable(f"not valid JSON ({exc.msg} at column {exc.colno})")


def read_records(path: str | Path, fmt: str = "auto") -> tuple[list[tuple[int, Any]], int]:
    """``([(number, record), ...], blank)``: each record with its line (row, item) number from 1, a
    record being a string (text), a JSON value (JSON, JSONL, Parquet rows as objects) or
    :class:`Unreadable`; and how many blank lines were skipped. OSError, UnicodeDecodeError and
    ValueError when the file as a whole cannot be read."""
    path = Path(path)
    fmt = file_format(path, fmt)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(enumerate(pq.read_table(path).to_pylist(), start=1)), 0
    lines = _lines(path)
    if fmt == "json":  # an array of records, one record, or else JSON Lines
        whole = _parsed("\n".join(lines))
        if not isinstance(whole, Unreadable):
            return list(enumerate(whole if isinstance(whole, list) else [whole], start=1)), 0
        if next((line.lstrip() for line in lines if line.strip()), "").startswith("["):
            raise ValueError(f"{path}: {whole.reason}")
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    blank = len(lines) - len(numbered)
    if fmt == "text":
        return numbered, blank
    return [(n, _parsed(line)) for n, line in numbered], blank


def _sharegpt(turns: Any) -> list[dict[str, Any]]:
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ValueError("'conversations' must be a list of {from, value} objects")
    unknown = sorted({str(t.get("from")) for t in turns} - SHAREGPT_ROLES.keys())
    if unknown:
        raise ValueError(f"conversations: unknown speaker {unknown[0]!r} ({', '.join(SHAREGPT_ROLES)})")
    return [{"role": SHAREGPT_ROLES[t["from"]], "content": t.get("value")} for t in turns]


def record_messages(record: Any) -> list[Any]:
    """The conversation of a record in OpenAI form (``messages`` as given: the request model
    validates them); ValueError saying what a record must hold."""
    if isinstance(record, Unreadable):
        raise ValueError(record.reason)
    if isinstance(record, str):
        return [{"role": "user", "content": record}]
    if not isinstance(record, dict):
        raise ValueError(f"a query is a string or a JSON object, not a JSON {type(record).__name__}")
    if "messages" in record:
        return record["messages"]
    if "conversations" in record:
        return _sharegpt(record["conversations"])
    for key in TEXT_KEYS:
        if isinstance(record.get(key), str):
            return [{"role": "user", "content": record[key]}]
    raise ValueError(
        f"no query: an object needs 'messages' (OpenAI chat form), 'conversations' (ShareGPT) or a "
        f"string under one of {', '.join(TEXT_KEYS)}"
    )


def record_text(record: Any) -> str:
    """The query of a record: its last user message's text."""
    messages = record_messages(record)
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise ValueError("no user message with text")
    return users[-1]
