"""Building a dataset version's DuckDB file from validated rows.

Good rows are staged as canonical CSV (csv.writer, in C) in parts inside the
ingest's private work directory; each finished part is loaded by DuckDB, with
fixed types, on a background thread while Python validates the next rows.
Measured faster than handing DuckDB Python objects, and needs neither pandas
nor pyarrow. DuckDB's error messages may quote a row, so a failure becomes a
fixed IngestError naming only the table, and the original is never re-raised.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import compress, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

import duckdb

from tessera.schemas import ColumnType, Dataset, Table

from .report import IngestError
from .validate import Cell

if TYPE_CHECKING:
    from _csv import Writer as _CsvWriter

log = logging.getLogger(__name__)

# Rows per staged part: big enough that DuckDB's per-load overhead is negligible,
# small enough that loading overlaps most of the validation.
PART_ROWS: Final = 200_000

DUCKDB_TYPES: Final = {
    ColumnType.TEXT: "VARCHAR",
    ColumnType.CODE: "VARCHAR",
    ColumnType.DATE: "DATE",
    ColumnType.INT: "BIGINT",
    ColumnType.BOOL: "BOOLEAN",
}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create_sql(table: Table) -> str:
    cols = ", ".join(
        f"{_quote(c.name)} {DUCKDB_TYPES[c.type]}{' NOT NULL' if c.required else ''}"
        for c in table.columns
    )
    return f"CREATE TABLE {_quote(table.name)} ({cols})"


def _insert_sql(table: Table) -> str:
    # Schema column names are code constants, safe inside a SQL string literal.
    types = ", ".join(f"'{c.name}': '{DUCKDB_TYPES[c.type]}'" for c in table.columns)
    return (
        f"INSERT INTO {_quote(table.name)} SELECT * FROM read_csv(?, columns = {{{types}}}, "
        "header = false, auto_detect = false, delim = ',', quote = '\"', escape = '\"', "
        "nullstr = '', dateformat = '%Y-%m-%d', max_line_size = 16777216)"
    )


@dataclass
class _Part:
    path: Path
    file: TextIO
    writer: _CsvWriter
    rows: int = 0


class DatabaseBuilder:
    """Builds one new DuckDB file. ``close()`` must always be called."""

    def __init__(self, path: Path, dataset: Dataset, work_dir: Path) -> None:
        self._dataset = dataset
        self._work_dir = work_dir
        self._parts: dict[str, _Part] = {}
        self._part_count = 0
        self._con: duckdb.DuckDBPyConnection | None = None
        # One worker: DuckDB parallelises each load itself; the point is overlap.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-load")
        self._pending: list[tuple[str, Future[None]]] = []
        self._submit("(setup)", lambda: self._create(path))

    def _create(self, path: Path) -> None:
        self._con = duckdb.connect(str(path))
        for table in self._dataset.tables:
            self._con.execute(_create_sql(table))

    def _submit(self, table: str, task: Callable[[], None]) -> None:
        self._pending.append((table, self._pool.submit(task)))

    def _load(self, table: Table, part: Path) -> None:
        assert self._con is not None  # created by the first task
        self._con.execute(_insert_sql(table), [str(part)])
        part.unlink()  # record-level data: keep no copy longer than needed

    def append(
        self,
        table: Table,
        columns: Mapping[str, Sequence[Cell]],
        keep: Sequence[bool] | None,
        count: int,
    ) -> None:
        """Stage ``count`` rows of a batch: those selected by ``keep`` (None for all)."""
        part = self._parts.get(table.name)
        if part is None:
            self._part_count += 1
            path = self._work_dir / f"part-{self._part_count}.csv"
            f = path.open("w", encoding="utf-8", newline="")
            part = self._parts[table.name] = _Part(path, f, csv.writer(f, lineterminator="\n"))
        # Absent columns are an endless "" (NULL); the batch's own lists set the length.
        cells = [columns.get(c.name, repeat("")) for c in table.columns]
        rows: Iterable[Sequence[Cell]] = zip(*cells, strict=False)
        if keep is not None:
            rows = compress(rows, keep)
        part.writer.writerows(rows)
        part.rows += count
        if part.rows >= PART_ROWS:
            self._flush(table)

    def _flush(self, table: Table) -> None:
        part = self._parts.pop(table.name, None)
        if part is not None:
            part.file.close()
            self._submit(table.name, lambda: self._load(table, part.path))

    def finish(self, expected: Mapping[str, int]) -> None:
        """Load what is staged, check each table holds exactly the rows validation
        accepted, and checkpoint."""
        for table in self._dataset.tables:
            self._flush(table)
        for table_name, future in self._pending:
            error = future.exception()  # waits; the error is inspected, never raised
            if error is not None:
                log.error("loading table %s failed (%s)", table_name, type(error).__name__)
                raise IngestError(f"internal error while loading table {table_name}")
        con = self._con
        assert con is not None
        failed = "(checkpoint)"
        try:
            for table in self._dataset.tables:
                failed = table.name
                query = f"SELECT count(*) FROM {_quote(table.name)}"
                if con.execute(query).fetchall() != [(expected.get(table.name, 0),)]:
                    break  # staging and validation disagree: never publish that
            else:
                failed = "(checkpoint)"
                con.execute("CHECKPOINT")
                failed = ""
        except duckdb.Error:
            pass
        if failed:
            raise IngestError(f"internal error while loading table {failed}")

    def close(self) -> None:
        for part in self._parts.values():
            part.file.close()
        self._parts.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        con, self._con = self._con, None
        if con is not None:
            con.close()
