"""Instruction data for phase 1: queries with reference answers, from a file in any common format.

The file is any format of :mod:`router.query_files` but plain text (JSONL, a JSON array, Parquet;
gzipped or not), one record per query. A record names its parts in one of the usual ways:

- the query: ``instruction`` (ours, Alpaca, Dolly), ``prompt``, ``question`` or ``query``, with
  Alpaca's ``input`` or Dolly's ``context`` appended after a blank line when not empty; or, where
  the query or the reference is not given so, a conversation (OpenAI ``messages`` or ShareGPT
  ``conversations``) whose last turn is the answer: its query is the user turn before it (phase 1
  asks one turn);
- the reference answer: ``reference`` (ours), ``output`` (Alpaca), ``response`` (Dolly),
  ``answer`` or ``completion`` (a number is read as text); or that last assistant turn;
- optional: ``id`` (else a hash of the query and reference: the same for the same record in any
  file, order or run), ``domain`` (or Dolly's ``category``), ``source`` (default: the file's name
  up to its first dot), ``split`` (``train`` or ``test``; default ``train``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from router.query_files import Unreadable, content_text, read_records, record_messages

log = logging.getLogger(__name__)

QUERY_KEYS = ("instruction", "prompt", "question", "query")
CONTEXT_KEYS = ("input", "context")
REFERENCE_KEYS = ("reference", "output", "response", "answer", "completion")
DOMAIN_KEYS = ("domain", "category")
SPLITS = ("train", "test")
COLUMNS = ["query_id", "query", "reference", "domain", "source", "split"]


def _first(record: dict, keys: tuple[str, ...]) -> tuple[str, Any] | None:
    return next(((key, record[key]) for key in keys if record.get(key) is not None), None)


def _from_conversation(record: dict) -> tuple[Any, Any]:
    messages = record_messages(record)
    if not isinstance(messages, list):
        raise ValueError(f"messages must be a list, not a JSON {type(messages).__name__}")
    messages = [m for m in messages if isinstance(m, dict)]
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise ValueError("a conversation needs its answer as the last turn (an assistant's)")
    users = [m for m in messages[:-1] if m.get("role") == "user"]
    if not users:
        raise ValueError("a conversation needs a user turn before its answer")
    return content_text(users[-1].get("content")), content_text(messages[-1].get("content"))


def _as_text(value: Any) -> Any:
    """A number as text (a numeric answer); text parts joined; anything else as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return content_text(value) if isinstance(value, list) else value


def instruction_row(record: Any, source: str) -> dict[str, str]:
    """One record as phase 1's columns; ValueError saying what it lacks."""
    if isinstance(record, Unreadable):
        raise ValueError(record.reason)
    if isinstance(record, str):
        raise ValueError("a line of text: a record is an object with a query and its reference answer")
    if not isinstance(record, dict):
        raise ValueError(f"a record is a JSON object, not a JSON {type(record).__name__}")
    query, reference = _first(record, QUERY_KEYS), _first(record, REFERENCE_KEYS)
    conversation = record.get("messages") is not None or record.get("conversations") is not None
    if (query is None or reference is None) and conversation:
        query_text, reference_text = _from_conversation(record)
    elif query is None or reference is None:
        wanted = (
            (query, f"a query ({'/'.join(QUERY_KEYS)}, or messages/conversations)"),
            (reference, f"a reference answer ({'/'.join(REFERENCE_KEYS)})"),
        )
        lacking = " and ".join(what for found, what in wanted if found is None)
        raise ValueError(f"lacks {lacking}; its fields: {', '.join(map(str, record)) or 'none'}")
    else:
        query_text, reference_text = _as_text(query[1]), _as_text(reference[1])
        context = _first(record, CONTEXT_KEYS)
        if isinstance(query_text, str) and context and isinstance(context[1], str) and context[1].strip():
            query_text = f"{query_text}\n\n{context[1]}"
    if not isinstance(query_text, str) or not isinstance(reference_text, str):
        raise ValueError("the query and the reference must be strings")
    split = str(record.get("split") or "train")
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {', '.join(SPLITS)}")
    domain = _first(record, DOMAIN_KEYS)
    given = record.get("id")
    derived = hashlib.sha1(f"{query_text}\0{reference_text}".encode()).hexdigest()[:16]
    return {
        "query_id": str(given) if given is not None else derived,
        "query": query_text,
        "reference": reference_text,
        "domain": str(domain[1]) if domain else "",
        "source": str(record.get("source") or source),
        "split": split,
    }


def read_instructions(path: str | Path, skip_bad: bool = False) -> pd.DataFrame:
    """Every record of the file as phase 1's columns (strings); ValueError naming the bad records
    (up to 10, with their count) or the duplicate ids. ``skip_bad``: bad records are left out with
    a warning naming them (an error still if none is good)."""
    path = Path(path)
    source = path.name.split(".")[0]
    try:
        records, _ = read_records(path)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    rows, problems = [], []
    for number, record in records:
        try:
            rows.append(instruction_row(record, source))
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
    if problems:
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        said = "\n".join(problems[:10]) + more
        if not skip_bad or not rows:
            raise ValueError("instruction data:\n" + said)
        log.warning("%s: %d bad records left out:\n%s", path, len(problems), said)
    table = pd.DataFrame(rows, columns=COLUMNS)
    repeated = table[table.duplicated(["query_id", "query", "reference"])]
    if len(repeated):  # the same query and reference twice: one row (phase 1 answers it once)
        log.warning("%s: %d repeated records (same id, query and reference) dropped", path, len(repeated))
        table = table.drop(repeated.index)
    clashes = table.query_id[table.query_id.duplicated()].unique()
    if len(clashes):
        raise ValueError(f"{path}: ids used by different records: {', '.join(map(str, clashes[:10]))}")
    return table.astype("string").reset_index(drop=True)
