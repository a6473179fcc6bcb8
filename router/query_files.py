"""Files of queries: one reader for what users hand the router as queries, an expert's example
queries (``examples: <file>``) and the traffic of a dry run (``expert-router route --queries``).

Formats (``auto`` picks by the name, then by the first character): JSONL (``.jsonl``,
``.ndjson``: a record a line), JSON (``.json``: an array of records, one record, or JSONL), Parquet
(``.parquet``), CSV (``.csv``) and TSV (``.tsv``) with a header row (a record a row), and plain
text (a query a line); all but Parquet may be gzipped (``.gz``). A record is a query as a string,
or an object with a conversation (OpenAI ``messages``, or ShareGPT ``conversations`` of
``from``/``value`` turns) or a query under one of :data:`TEXT_KEYS`; a line of an OpenAI Batch API
input file holds that object under ``body``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("auto", "jsonl", "json", "parquet", "csv", "tsv", "text")
BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "text",
}
TEXT_KEYS = ("instruction", "query", "prompt", "question", "text")
"""Fields that hold a record's query when it has no conversation, in the order they are looked for."""
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}


@dataclass(frozen=True)
class Unreadable:
    """A line or item that is not a record (bad JSON): the reader's caller says so, naming it."""

    reason: str


def named_format(path: Path, fmt: str = "auto") -> str:
    """``fmt`` unless ``auto``, else the format the file's name says; ``auto`` when it says none."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    return BY_SUFFIX.get(Path(path.name.removesuffix(".gz")).suffix, "auto")


def _sniffed(text: str) -> str:
    """The format of a file whose name says none: JSON if it starts with ``[`` that begins a JSON
    document (not "[INST] ..." prompts), JSONL with ``{``, else text."""
    first = text.lstrip()[:1]
    if first == "[":
        return "text" if isinstance(_parsed(text), Unreadable) else "json"
    return "jsonl" if first == "{" else "text"


def _text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig") as f:  # a byte-order mark is not text
        return f.read()


def _split_lines(text: str) -> list[str]:
    """Lines at ``\\n`` only (JSON strings may hold U+2028 and other breaks ``str.splitlines``
    splits at), without a final ``\\r``."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}" if "\n" in text.strip() else f"column {exc.colno}"
        return Unreadable(f"not valid JSON ({exc.msg} at {where})")


def _without_nulls(value: Any) -> Any:
    """A Parquet row as the JSON it came from: Arrow gives every struct every field of its column,
    null where a record lacked it."""
    if isinstance(value, dict):
        return {key: _without_nulls(v) for key, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _table_rows(text: str, delimiter: str) -> list[dict[str, str]]:
    """The rows of a CSV/TSV file with a header, as objects (empty cells left out); quoted cells
    may span lines and be of any length."""
    csv.field_size_limit(2**31 - 1)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        return []
    return [{key: value for key, value in row.items() if key is not None and value} for row in reader]


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading Parquet needs pyarrow (pip install 'expert-router[serve]')") from None
    return [_without_nulls(row) for row in pq.read_table(path).to_pylist()]


def read_records(path: str | Path, fmt: str = "auto") -> tuple[list[tuple[int, Any]], int]:
    """``([(number, record), ...], blank)``: each record with its number from 1 (its line in JSONL and
    text, its item in a JSON array, its row in Parquet, CSV and TSV), a record being a string
    (text), a JSON value (JSON, JSONL; Parquet, CSV and TSV rows as objects) or
    :class:`Unreadable`; and how many blank lines were skipped. ValueError saying why when the
    file as a whole cannot be read."""
    path = Path(path)
    fmt = named_format(path, fmt)
    try:
        if fmt == "parquet":
            return list(enumerate(_parquet_rows(path), start=1)), 0
        text = _text(path)
    except Exception as exc:  # unreadable, not UTF-8, broken gzip, not Parquet, no pyarrow
        raise ValueError(f"cannot read it: {exc}") from None
    if fmt == "auto":
        fmt = _sniffed(text)
    if fmt in ("csv", "tsv"):
        return list(enumerate(_table_rows(text, "," if fmt == "csv" else "\t"), start=1)), 0
    if fmt == "json" and not isinstance(whole := _parsed(text), Unreadable):  # an array or one record
        return list(enumerate(whole if isinstance(whole, list) else [whole], start=1)), 0
    if fmt == "json" and text.lstrip().startswith("["):
        raise ValueError(whole.reason)
    lines = _split_lines(text)
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if fmt == "text":
        return numbered, len(lines) - len(numbered)
    records = [(n, _parsed(line)) for n, line in numbered]
    if len(records) > 1 and all(isinstance(r, Unreadable) for _, r in records):
        whole = _parsed(text)  # not JSON Lines: one pretty-printed document, or what is wrong with it
        if isinstance(whole, Unreadable):
            raise ValueError(whole.reason)
        return list(enumerate(whole if isinstance(whole, list) else [whole], start=1)), 0
    return records, len(lines) - len(numbered)


def _sharegpt(turns: Any) -> list[dict[str, Any]]:
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ValueError("'conversations' must be a list of {from, value} objects")
    unknown = sorted({str(t.get("from")) for t in turns} - SHAREGPT_ROLES.keys())
    if unknown:
        raise ValueError(f"conversations: unknown speaker {unknown[0]!r} ({', '.join(SHAREGPT_ROLES)})")
    return [{"role": SHAREGPT_ROLES[t["from"]], "content": t.get("value")} for t in turns]


def request_of(record: Any) -> Any:
    """The request a record holds: an OpenAI Batch API input line (``custom_id``, ``method``,
    ``url``, ``body``) holds it under ``body`` (a chat or a text completion request); any other
    record is its own."""
    if isinstance(record, dict) and "custom_id" in record and isinstance(record.get("body"), dict):
        return record["body"]
    return record


def record_messages(record: Any) -> list[Any]:
    """The conversation of a record in OpenAI form (``messages`` as given: the request model
    validates them); ValueError saying what a record must hold."""
    record = request_of(record)
    if isinstance(record, Unreadable):
        raise ValueError(record.reason)
    if isinstance(record, str):
        return [{"role": "user", "content": record}]
    if not isinstance(record, dict):
        raise ValueError(f"a query is a string or a JSON object, not a JSON {type(record).__name__}")
    if record.get("messages") is not None:  # as given: the request model says what is wrong
        return record["messages"]
    if record.get("conversations") is not None:
        return _sharegpt(record["conversations"])
    for key in TEXT_KEYS:
        if isinstance(record.get(key), str):
            return [{"role": "user", "content": record[key]}]
    raise ValueError(
        f"no query: an object needs 'messages' (OpenAI chat form), 'conversations' (ShareGPT) or a "
        f"string under one of {', '.join(TEXT_KEYS)}"
    )


def content_text(content: Any) -> str | None:
    """A message's text: its content string, or its text parts joined by blank lines."""
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        content = "\n\n".join(t for t in texts if isinstance(t, str)) or None
    return content if isinstance(content, str) else None


def record_text(record: Any) -> str:
    """The query of a record: its last user message's text (its text parts, joined by blank lines)."""
    messages = record_messages(record)
    if not isinstance(messages, list):
        raise ValueError(f"messages must be a list, not a JSON {type(messages).__name__}")
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = content_text(users[-1]) if users else None
    if content is None:
        raise ValueError("no user message with text")
    return content
