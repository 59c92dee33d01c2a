"""Validating source files and bulk-loading the good rows into a DuckDB file.

Validation is per column over batches (see validate.py). Converted cells are
canonical text ("" for NULL), so DuckDB can read them back with fixed types and
no guessing.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

import duckdb

from tessera.schemas import ColumnType, Dataset, Table

from .readers import SourceFile, iter_batches
from .report import IngestError, Rejection
from .validate import Cell, ColumnConverter, HeaderMap, Reason

if TYPE_CHECKING:
    from _csv import Writer as _CsvWriter

LISTED_REJECTIONS: Final = 1000

_DUCKDB_TYPES: Final = {
    ColumnType.TEXT: "VARCHAR",
    ColumnType.CODE: "VARCHAR",
    ColumnType.DATE: "DATE",
    ColumnType.INT: "BIGINT",
    ColumnType.BOOL: "BOOLEAN",
}


@dataclass
class RejectionLog:
    """Lists the first ``limit`` problems and counts the rest."""

    limit: int = LISTED_REJECTIONS
    listed: list[Rejection] = field(default_factory=list)
    not_listed: int = 0

    def add(self, rejection: Rejection) -> None:
        if len(self.listed) < self.limit:
            self.listed.append(rejection)
        else:
            self.not_listed += 1


@dataclass(frozen=True)
class FileResult:
    loaded: int
    rejected: int


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DatabaseBuilder:
    """Builds one new dataset version file from validated batches.

    Good rows are staged as canonical CSV (csv.writer, in C) in the ingest's
    private work directory, then read by DuckDB with fixed types: measured
    faster than handing DuckDB Python objects, and needs neither pandas nor
    pyarrow. DuckDB's error messages may quote a row, so each becomes a fixed
    IngestError naming only the table, raised after the except block so that
    nothing is chained.
    """

    def __init__(self, path: Path, dataset: Dataset, work_dir: Path) -> None:
        self._path = path
        self._dataset = dataset
        self._staging = {t.name: work_dir / f"{t.name}.csv" for t in dataset.tables}
        self._files: dict[str, TextIO] = {}
        self._writers: dict[str, _CsvWriter] = {}

    def append(
        self, table: Table, columns: Mapping[str, Sequence[Cell]], keep: Sequence[bool] | None
    ) -> None:
        """Stage the rows of a batch selected by ``keep`` (None for all)."""
        writer = self._writers.get(table.name)
        if writer is None:
            f = self._staging[table.name].open("w", encoding="utf-8", newline="")
            self._files[table.name] = f
            writer = self._writers[table.name] = csv.writer(f, lineterminator="\n")
        # Absent columns are an endless "" (NULL); the batch's own lists set the length.
        cells = [columns.get(c.name, repeat("")) for c in table.columns]
        rows: Iterable[Sequence[Cell]] = zip(*cells, strict=False)
        if keep is not None:
            rows = compress(rows, keep)
        writer.writerows(rows)

    def _close_staging(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._writers.clear()

    def finish(self, expected: Mapping[str, int]) -> None:
        """Load the staged rows, check each table holds exactly what validation
        accepted, and checkpoint."""
        self._close_staging()
        current = "(setup)"
        try:
            with duckdb.connect(str(self._path)) as con:
                for table in self._dataset.tables:
                    current = table.name
                    con.execute(_create_sql(table))
                    staging = self._staging[table.name]
                    if staging.exists() and staging.stat().st_size:
                        con.execute(_insert_sql(table), [str(staging)])
                    counted = con.execute(f"SELECT count(*) FROM {_quote(table.name)}").fetchall()
                    if counted != [(expected.get(table.name, 0),)]:
                        break  # staging and validation disagree: never publish that
                else:
                    current = ""
                    con.execute("CHECKPOINT")
        except duckdb.Error:
            pass
        if current:
            raise IngestError(f"internal error while loading table {current}")

    def close(self) -> None:
        self._close_staging()


def _create_sql(table: Table) -> str:
    cols = ", ".join(
        f"{_quote(c.name)} {_DUCKDB_TYPES[c.type]}{' NOT NULL' if c.required else ''}"
        for c in table.columns
    )
    return f"CREATE TABLE {_quote(table.name)} ({cols})"


def _insert_sql(table: Table) -> str:
    # Schema column names are code constants, safe inside a SQL string literal.
    types = ", ".join(f"'{c.name}': '{_DUCKDB_TYPES[c.type]}'" for c in table.columns)
    return (
        f"INSERT INTO {_quote(table.name)} SELECT * FROM read_csv(?, columns = {{{types}}}, "
        "header = false, auto_detect = false, delim = ',', quote = '\"', escape = '\"', "
        "nullstr = '', dateformat = '%Y-%m-%d', max_line_size = 16777216)"
    )


def validate_file(
    src: SourceFile,
    table: Table,
    header: HeaderMap,
    now_year: int,
    builder: DatabaseBuilder,
    log: RejectionLog,
) -> FileResult:
    """Validate ``src`` against ``table`` and append its good rows through ``builder``."""
    present = [c for c in table.columns if c.name in header.positions]
    converters = [ColumnConverter(c, now_year) for c in present]
    positions = [header.positions[c.name] for c in present]
    loaded = rejected = 0

    def malformed(line: int, reason: str) -> None:
        nonlocal rejected
        rejected += 1
        log.add(Rejection(src.label, line, None, reason))

    for batch in iter_batches(src, positions, malformed):
        converted: dict[str, Sequence[Cell]] = {}
        bad: dict[int, list[tuple[str, Reason]]] = {}
        for conv, raw in zip(converters, batch.columns, strict=True):
            cells, problems = conv.convert(raw)
            converted[conv.column.name] = cells
            for i, reason in problems:
                bad.setdefault(i, []).append((conv.column.name, reason))
        keep: list[bool] | None = None
        if bad:
            keep = [i not in bad for i in range(len(batch.lines))]
            for i in sorted(bad):
                for column, reason in bad[i]:
                    log.add(Rejection(src.label, batch.lines[i], column, reason.text))
        builder.append(table, converted, keep)
        loaded += len(batch.lines) - len(bad)
        rejected += len(bad)
    return FileResult(loaded, rejected)
