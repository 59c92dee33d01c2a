"""The stored form of a dataset version: its DuckDB tables, sealed (node/vault.py).

Plaintext inside the seal, a sequence of records:

    b"T" | u32 n | n bytes of JSON {"name", "sql"} | an Arrow IPC stream of the rows
    b"V" | u32 n | n bytes of JSON {"name", "sql"}      (a view, created after the tables)
    b"E"                                                (end)

Arrow IPC streams delimit themselves, so a table is written batch by batch straight
into the seal and read back batch by batch into DuckDB: neither side ever holds a
whole serialised table, and nothing record-level touches the disk unencrypted.
Loading builds an in-memory DuckDB database, then locks it down the way the catalog
always has (no files, no extensions, no configuration changes).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Final

import duckdb
import pyarrow as pa
import pyarrow.ipc as ipc

from tessera.node import vault
from tessera.node.vault import DataKey, SealedReader, SealedWriter, VaultError

BATCH_ROWS: Final = 122_880
_LEN: Final = struct.Struct(">I")
_MAX_META: Final = 1 << 20
_LOCKDOWN: Final = ("SET enable_external_access = false", "SET lock_configuration = true")
# An in-memory database would otherwise spill to ``./.tmp`` under memory pressure:
# plaintext rows on disk. Without a temp directory it fails the query instead.
_NO_SPILL: Final = "SET temp_directory = ''"


def binding(dataset: str, version: int) -> str:
    return f"dataset {dataset} version {version}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _record(out: SealedWriter, tag: bytes, meta: dict[str, Any]) -> None:
    body = json.dumps(meta, sort_keys=True).encode()
    out.write(tag + _LEN.pack(len(body)) + body)


def write_tables(
    con: duckdb.DuckDBPyConnection, out: SealedWriter, names: Collection[str] | None = None
) -> dict[str, int]:
    """Write the tables ``names`` of ``con``'s main schema (default: every table and
    view); returns rows per table. Anything else (staging tables) stays behind."""
    tables = con.execute(
        "SELECT table_name, sql FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name = 'main' AND NOT temporary "
        "ORDER BY table_oid"
    ).fetchall()
    views = con.execute(
        "SELECT view_name, sql FROM duckdb_views() "
        "WHERE database_name = current_database() AND schema_name = 'main' "
        "AND NOT internal AND NOT temporary ORDER BY view_oid"
    ).fetchall()
    if names is not None:
        missing = set(names) - {name for name, _ in tables}
        if missing:
            raise ValueError(f"the built version has no table {sorted(missing)[0]!r}")
        tables = [(name, sql) for name, sql in tables if name in names]
        views = []  # a view may read a table left behind
    rows: dict[str, int] = {}
    sink = pa.PythonFile(out, mode="w")
    for name, sql in tables:
        _record(out, b"T", {"name": name, "sql": sql})
        reader = con.sql(f"SELECT * FROM {_quote(name)}").to_arrow_reader(BATCH_ROWS)
        count = 0
        with ipc.new_stream(sink, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                count += batch.num_rows
        rows[name] = count
    for name, sql in views:
        _record(out, b"V", {"name": name, "sql": sql})
    out.write(b"E")
    return rows


def read_tables(src: SealedReader) -> duckdb.DuckDBPyConnection:
    """An in-memory, locked-down DuckDB connection holding what ``src`` holds."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(_NO_SPILL)
        source = pa.PythonFile(src, mode="r")
        while True:
            tag = src.read_exact(1)
            if tag == b"E":
                break
            if tag not in (b"T", b"V"):
                raise VaultError("sealed version: unknown record")
            (n,) = _LEN.unpack(src.read_exact(_LEN.size))
            if n > _MAX_META:
                raise VaultError("sealed version: oversized record")
            meta = json.loads(src.read_exact(n))
            con.execute(meta["sql"])
            if tag == b"V":
                continue
            target = _quote(meta["name"])
            for batch in ipc.open_stream(source):
                con.register("_tessera_load", batch)
                try:
                    con.execute(f"INSERT INTO {target} SELECT * FROM _tessera_load")
                finally:
                    con.unregister("_tessera_load")
        if not src.at_end():
            raise VaultError("sealed version: data after the end record")
        for stmt in _LOCKDOWN:
            con.execute(stmt)
    except BaseException:
        con.close()
        raise
    return con


def seal_to(
    path: Path,
    con: duckdb.DuckDBPyConnection,
    key: DataKey,
    dataset: str,
    version: int,
    names: Collection[str] | None = None,
) -> dict[str, int]:
    """Seal ``con``'s tables into a new file ``path`` (0600, fsynced)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        out = SealedWriter(f, key, vault.KIND_VERSION, binding(dataset, version))
        rows = write_tables(con, out, names)
        out.close()
        f.flush()
        os.fsync(f.fileno())
    return rows


def open_sealed(path: Path, key: DataKey, dataset: str, version: int) -> duckdb.DuckDBPyConnection:
    with path.open("rb", buffering=vault.CHUNK_BYTES + 64) as f:
        src = SealedReader(
            f, key, vault.KIND_VERSION, binding(dataset, version), f"{dataset} version {version}"
        )
        return read_tables(src)


def open_stream(src: BinaryIO, key: DataKey, dataset: str, version: int) -> SealedReader:
    return SealedReader(
        src, key, vault.KIND_VERSION, binding(dataset, version), f"{dataset} version {version}"
    )


def table_batches(
    path: Path, key: DataKey, dataset: str, version: int, table: str
) -> Iterator[tuple[str, pa.RecordBatch]]:
    """The rows of one table of a sealed version, batch by batch, each with the table's
    CREATE statement: decrypted chunk by chunk, never a whole copy. The rest of the
    file is read (and authenticated) to its end record, as ``read_tables`` does."""
    with path.open("rb", buffering=vault.CHUNK_BYTES + 64) as f:
        src = open_stream(f, key, dataset, version)
        source = pa.PythonFile(src, mode="r")
        while True:
            tag = src.read_exact(1)
            if tag == b"E":
                break
            if tag not in (b"T", b"V"):
                raise VaultError("sealed version: unknown record")
            (n,) = _LEN.unpack(src.read_exact(_LEN.size))
            if n > _MAX_META:
                raise VaultError("sealed version: oversized record")
            meta = json.loads(src.read_exact(n))
            if tag == b"V":
                continue
            wanted = meta["name"] == table
            for batch in ipc.open_stream(source):
                if wanted:
                    yield str(meta["sql"]), batch
        if not src.at_end():
            raise VaultError("sealed version: data after the end record")
