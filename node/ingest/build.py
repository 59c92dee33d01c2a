"""Building a dataset version in an in-memory DuckDB connection.

Validated rows (canonical text, ``""`` for NULL) are staged batch by batch into
``stage_<table>`` tables of the in-memory database: each batch is handed to
DuckDB as numpy object arrays (a replacement scan, no copy through CSV) and cast
to the schema's types there. Nothing record-level is written to disk while a
version is built: reconciliation (reconcile.py) turns the staging tables into
the final ones, and :func:`manifest.publish` receives the finished connection.

Staging tables carry three ingest-only columns: ``_year`` (the return's
collection year, from a ``YEAR`` column; NULL when the file has none), ``_file``
(the file's position in the order given) and ``_seq`` (the row's position over
the whole ingest). DuckDB's error messages may quote a row, so a failure becomes
a fixed IngestError naming only the table, and the original is never re-raised.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from itertools import compress, repeat
from typing import Final

import duckdb
import numpy as np

from tessera.schemas import ColumnType, Dataset, Table

from .report import IngestError
from .validate import Cell

log = logging.getLogger(__name__)

DUCKDB_TYPES: Final = {
    ColumnType.TEXT: "VARCHAR",
    ColumnType.CODE: "VARCHAR",
    ColumnType.DATE: "DATE",
    ColumnType.INT: "BIGINT",
    ColumnType.BOOL: "BOOLEAN",
}
STAGE_PREFIX: Final = "stage_"
_BATCH_VIEW: Final = "tessera_batch"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_sql(table: Table, name: str | None = None, *, staging: bool = False) -> str:
    cols = [
        f"{quote(c.name)} {DUCKDB_TYPES[c.type]}{' NOT NULL' if c.required else ''}"
        for c in table.columns
    ]
    if staging:
        cols += ["_year BIGINT", "_file BIGINT NOT NULL", "_seq BIGINT NOT NULL"]
    return f"CREATE TABLE {quote(name or table.name)} ({', '.join(cols)})"


def _cast(column_name: str, type_: ColumnType) -> str:
    ref = f"NULLIF({quote(column_name)}, '')"
    if type_ in (ColumnType.TEXT, ColumnType.CODE):
        return ref
    return f"CAST({ref} AS {DUCKDB_TYPES[type_]})"


class DatabaseBuilder:
    """Stages validated rows in an in-memory DuckDB connection.

    ``connection`` is the database being built; ``close()`` releases it unless
    ``detach()`` handed it on (to publication).
    """

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset
        # No spilling to a temporary directory (DuckDB's default is ./.tmp): the rows
        # being built must never reach the disk in plaintext. No progress bar on the
        # operator's terminal either (it would interleave with the report).
        self._con: duckdb.DuckDBPyConnection | None = duckdb.connect(
            ":memory:", config={"temp_directory": ""}
        )
        self._con.execute("SET enable_progress_bar = false")
        self._staged: dict[str, int] = {}
        self._seq = 0
        self._insert: dict[str, str] = {}
        for table in dataset.tables:
            self._con.execute(create_sql(table, STAGE_PREFIX + table.name, staging=True))
            casts = [_cast(c.name, c.type) for c in table.columns]
            casts += ["CAST(NULLIF(_year, '') AS BIGINT)", "CAST(_file AS BIGINT)", "_seq"]
            self._insert[table.name] = (
                f"INSERT INTO {quote(STAGE_PREFIX + table.name)} "
                f"SELECT {', '.join(casts)} FROM {_BATCH_VIEW}"
            )
            self._staged[table.name] = 0

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        assert self._con is not None
        return self._con

    def staged(self, table: str) -> int:
        return self._staged.get(table, 0)

    def append(
        self,
        table: Table,
        columns: Mapping[str, Sequence[Cell]],
        keep: Sequence[bool] | None,
        count: int,
        *,
        year: Sequence[Cell] | None,
        file_index: int,
    ) -> None:
        """Stage ``count`` rows of a batch: those selected by ``keep`` (None for all)."""
        if count == 0:
            return
        con = self.connection
        arrays: dict[str, np.ndarray] = {}
        for c in table.columns:
            cells: Sequence[Cell] | None = columns.get(c.name)
            values = list(repeat("", count)) if cells is None else _kept(cells, keep)
            arrays[c.name] = np.array(values, dtype=object)
        years = list(repeat("", count)) if year is None else _kept(year, keep)
        arrays["_year"] = np.array(years, dtype=object)
        arrays["_file"] = np.full(count, file_index, dtype=np.int64)
        arrays["_seq"] = np.arange(self._seq, self._seq + count, dtype=np.int64)
        if any(len(a) != count for a in arrays.values()):
            raise IngestError(f"internal error while loading table {table.name}")
        self._seq += count
        failed = False
        try:
            con.register(_BATCH_VIEW, arrays)
            try:
                con.execute(self._insert[table.name])
            finally:
                con.unregister(_BATCH_VIEW)
        except duckdb.Error as e:
            log.error("staging table %s failed (%s)", table.name, type(e).__name__)
            failed = True
        if failed:  # raised outside the except block: DuckDB's message may quote a row
            raise IngestError(f"internal error while loading table {table.name}")
        self._staged[table.name] += count

    def check_staged(self) -> None:
        """Each staging table holds exactly the rows validation accepted."""
        con = self.connection
        for table in self._dataset.tables:
            sql = f"SELECT count(*) FROM {quote(STAGE_PREFIX + table.name)}"
            if con.execute(sql).fetchall() != [(self._staged[table.name],)]:
                raise IngestError(f"internal error while loading table {table.name}")

    def drop_staging(self) -> None:
        for table in self._dataset.tables:
            self.connection.execute(f"DROP TABLE IF EXISTS {quote(STAGE_PREFIX + table.name)}")

    def detach(self) -> duckdb.DuckDBPyConnection:
        con, self._con = self._con, None
        assert con is not None
        return con

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.close()


def _kept(cells: Sequence[Cell], keep: Sequence[bool] | None) -> list[Cell]:
    return list(cells) if keep is None else list(compress(cells, keep))
