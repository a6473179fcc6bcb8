"""The labelled table: the contract between phase 1 (data), phase 2 (routers) and evaluation.

One Parquet file (or a folder of Parquet parts), one row per (query, expert):

| column | type | meaning |
|---|---|---|
| query_id | str | id of the query (unique per query; the same for all its experts) |
| query | str | the instruction / conversation text the router sees |
| domain | str | general, math, code, biomedical, science, … ('' if unknown) |
| source | str | dataset the query came from |
| split | str | train or test |
| expert | str | expert name |
| answer | str | the expert's answer ('' if not kept) |
| nll | float | negative log-likelihood of the reference under the expert (NaN if unknown) |
| bertsim | float | cosine similarity of answer and reference embeddings (NaN if unknown) |
| quality | float | what routers learn: BERTSim (phase 1) or an imported outcome (0/1, judge) |
| inference_s | float | seconds the expert took (NaN if unknown) |
| input_tokens | int | prompt tokens |
| output_tokens | int | generated tokens |
| cost | float | dollars: tokens × the expert's $/1M prices |
| error | str | why the row is unusable ('' when fine); such rows are kept, never dropped silently |

Routers and evaluation choose their quality column (``quality`` by default, or ``bertsim``, …).
Pure pandas/numpy: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS: dict[str, str] = {
    "query_id": "string",
    "query": "string",
    "domain": "string",
    "source": "string",
    "split": "string",
    "expert": "string",
    "answer": "string",
    "nll": "float64",
    "bertsim": "float64",
    "quality": "float64",
    "inference_s": "float64",
    "input_tokens": "int64",
    "output_tokens": "int64",
    "cost": "float64",
    "error": "string",
}
SPLITS = ("train", "test")


class TableError(ValueError):
    """The table does not follow the format; the message says how."""


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """The table with exactly :data:`COLUMNS` in order and types; raises TableError if it cannot be."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise TableError(f"labelled table lacks columns: {', '.join(missing)}")
    out = df[list(COLUMNS)].astype(COLUMNS)
    for col in ("answer", "domain", "source", "error"):
        out[col] = out[col].fillna("")
    bad_split = sorted(set(out["split"].dropna()) - set(SPLITS))
    if bad_split:
        raise TableError(f"split must be one of {SPLITS}; found {bad_split}")
    dup = out.duplicated(["query_id", "expert"])
    if dup.any():
        first = out.loc[dup, ["query_id", "expert"]].iloc[0].tolist()
        raise TableError(f"{int(dup.sum())} duplicate (query_id, expert) rows, e.g. {first}")
    return out.reset_index(drop=True)


def write_table(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a conformed table as one Parquet file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conform(df).to_parquet(path, index=False)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table from a Parquet file or a folder of Parquet parts."""
    return conform(pd.read_parquet(path))


@dataclass(frozen=True)
class Matrices:
    """A table as aligned arrays: one row per query, one column per expert."""

    query_ids: np.ndarray  # (n,)
    queries: list[str]
    domains: np.ndarray  # (n,)
    splits: np.ndarray  # (n,)
    experts: list[str]
    quality: np.ndarray  # (n, m)
    cost: np.ndarray  # (n, m)
    nll: np.ndarray  # (n, m)
    bertsim: np.ndarray  # (n, m)
    inference_s: np.ndarray  # (n, m)
    output_tokens: np.ndarray  # (n, m)
    input_tokens: np.ndarray  # (n, m)

    def subset(self, rows: np.ndarray) -> Matrices:
        """The queries selected by an index or boolean mask."""
        idx = np.arange(len(self.query_ids))[rows]
        return Matrices(
            query_ids=self.query_ids[idx],
            queries=[self.queries[i] for i in idx],
            domains=self.domains[idx],
            splits=self.splits[idx],
            experts=self.experts,
            **{k: getattr(self, k)[idx] for k in _PER_EXPERT},
        )

    def split(self, name: str) -> Matrices:
        return self.subset(self.splits == name)

    def __len__(self) -> int:
        return len(self.query_ids)


_PER_EXPERT = ("quality", "cost", "nll", "bertsim", "inference_s", "output_tokens", "input_tokens")


def to_matrices(
    df: pd.DataFrame, quality_column: str = "quality", experts: list[str] | None = None
) -> Matrices:
    """Pivot a table to per-query × per-expert arrays.

    Only queries that every expert answered without error and with a known quality are kept.
    ``experts`` fixes the column order (default: sorted names).
    """
    if quality_column not in df.columns:
        raise TableError(f"no quality column '{quality_column}'")
    ok = df[(df["error"] == "") & df[quality_column].notna()]
    names = experts or sorted(ok["expert"].unique())
    ok = ok[ok["expert"].isin(names)]
    complete = ok.groupby("query_id")["expert"].nunique() == len(names)
    ok = ok[ok["query_id"].isin(complete[complete].index)]
    if ok.empty:
        raise TableError("no query has a usable row for every expert")
    values = {"quality": quality_column, **{k: k for k in _PER_EXPERT if k != "quality"}}
    wide = ok.pivot(index="query_id", columns="expert", values=list(set(values.values())))
    meta = ok.drop_duplicates("query_id").set_index("query_id").loc[wide.index]
    return Matrices(
        query_ids=wide.index.to_numpy(dtype=object),
        queries=meta["query"].astype(str).tolist(),
        domains=meta["domain"].astype(str).to_numpy(dtype=object),
        splits=meta["split"].astype(str).to_numpy(dtype=object),
        experts=list(names),
        **{k: wide[col][names].to_numpy(dtype=float, na_value=np.nan) for k, col in values.items()},
    )
