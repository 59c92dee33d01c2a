"""Helpers shared by the ingest and catalog tests: fixed clock, file writers,
and a schema-driven generator of small valid file sets."""

from __future__ import annotations

import csv
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from tessera.schemas import Column, ColumnType, Dataset, Table

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write dedented ``text`` exactly (no newline translation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding=encoding, newline="") as f:
        f.write(textwrap.dedent(text).lstrip("\n"))
    return path


def valid_value(column: Column, i: int) -> str:
    if column.type is ColumnType.CODE:
        return column.codes[i % len(column.codes)]
    if column.type is ColumnType.DATE:
        return f"2020-01-{1 + i % 28:02d}"
    if column.type is ColumnType.INT:
        lo = column.min if column.min is not None else 0
        hi = column.max if column.max is not None else lo + 100
        return str(min(lo + i, hi))
    if column.type is ColumnType.BOOL:
        return ("yes", "no", "1", "0", "TRUE", "false")[i % 6]
    return f"{column.name[:3].upper()}{i:05d}"


def write_valid_csv(path: Path, table: Table, rows: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow([c.name for c in table.columns])
        for i in range(rows):
            w.writerow([valid_value(c, i) for c in table.columns])
    return path


def valid_file_set(folder: Path, dataset: Dataset, rows: int = 5) -> dict[str, list[Path]]:
    """One valid CSV per table of ``dataset`` (optional ones included)."""
    return {t.name: [write_valid_csv(folder / f"{t.name}.csv", t, rows)] for t in dataset.tables}


def csv_to_parquet(csv_path: Path, parquet_path: Path) -> Path:
    """The CSV's cells as an all-VARCHAR Parquet file, written by DuckDB."""
    with duckdb.connect() as con:
        con.execute(
            f"COPY (SELECT * FROM read_csv('{csv_path}', all_varchar = true, header = true)) "
            f"TO '{parquet_path}' (FORMAT parquet)"
        )
    return parquet_path


def connect_version(db: Path) -> duckdb.DuckDBPyConnection:
    """A published version's tables, in memory: ``db`` names ``<dataset>/v<N>.duckdb``
    or ``.sealed``; the sealed file is opened with the test data key."""
    from tessera.node import storage, vault

    sealed = db.with_suffix(".sealed")
    return storage.open_sealed(
        sealed, vault.default_key(), db.parent.name, int(db.stem.removeprefix("v"))
    )


def query(db: Path, sql: str) -> list[tuple[object, ...]]:
    with connect_version(db) as con:
        return con.execute(sql).fetchall()
