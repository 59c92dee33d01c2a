"""A one-table source's frame built straight from the sealed version, batch by batch.

`frame.scan` reads a version's in-memory DuckDB copy, so a frame build once held that
whole decrypted copy and the scan's arrays together (about 400 + 330 MiB at 10^7
rows). For a source that is one table (``SELECT * FROM t``) this reads the sealed
Arrow IPC batches instead (decrypted chunk by chunk, storage.table_batches), loads
each into a scratch in-memory DuckDB table made by the table's own CREATE statement
(so its types are the ones the copy has), and runs `frame.select_sql` on it: the
unit hashes and the compiler's keyed rank depend only on the row (the rank hashes
the row's struct), so per batch they are what one whole scan gives. Only one batch of
plaintext is in DuckDB at a time. Joined sources keep `frame.scan`.

Measured at 10^7 rows (bench data, fresh process, VmHWM): 897 MiB through the DuckDB
copy, 455 MiB streamed (the peak is order.sort_keys: its keys and one int64 argsort);
the build takes about 10 s against 7 s (two passes, each decrypting the file; paid in
the background at start, catalog.warm).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Literal

import duckdb
import numpy as np
import pyarrow as pa

from tessera import schemas
from tessera.node import storage
from tessera.node.compiler import order_words
from tessera.node.engine import arrow, memory
from tessera.node.engine import frame as frames
from tessera.node.engine import order as ordering
from tessera.node.vault import DataKey

_ONE_TABLE: Final = re.compile(r"SELECT \* FROM ([A-Za-z_][A-Za-z0-9_]*)")
_LOAD: Final = "_tessera_batch"


def one_table(dataset: str, source: str) -> str | None:
    """The table a source is exactly, or None (a join, a projection)."""
    ds = schemas.dataset(dataset)
    if ds is None or source not in ds.sources:
        return None
    m = _ONE_TABLE.fullmatch(ds.sources[source].sql)
    if m is None or ds.table(m[1]) is None:
        return None
    return m[1]


def build_sealed(
    path: Path,
    key: DataKey,
    dataset: str,
    version: int,
    source: str,
    order_key: bytes,
    rows_hint: int = 0,
) -> frames.Frame | Literal[False] | None:
    """The source's frame (None: two units' hashes collide), or False when it is not
    one table or the table has no rows (then `frame.scan` does it). Two passes over
    the sealed file: the unit hashes and ranks first, sorted into the frame's order;
    then the columns, each row written straight to its sorted place, so the columns
    are never held in scan order beside the sort's arrays. `rows_hint` (the manifest's
    row count) sizes the first pass's arrays."""
    table = one_table(dataset, source)
    ds = schemas.dataset(dataset)
    if table is None or ds is None:
        return False
    src = ds.sources[source]
    opt = ds.opt_out_column
    words = list(order_words(order_key))
    batches = _Batches(path, key, dataset, version, table, src.sql)
    keys = _first_pass(batches, src, opt, words, max(rows_hint, 0))
    if keys is None:
        return False
    n, oo, check, ranked = keys[0], keys[4], keys[5], list(keys[1:4])
    del keys  # sort_keys frees each key once used: hold no other reference
    sorted_ = ordering.sort_keys(ranked)
    if sorted_ is None:
        return None
    order, new_unit, r_sorted = sorted_
    del sorted_  # else the tuple keeps the order and ranks alive through the second pass
    # The ranks are needed only for the ties: keep their few candidate pairs instead.
    pairs = ordering.tie_pairs(r_sorted, new_unit)
    del r_sorted
    oo_sorted = oo[order] if oo is not None else None
    del oo
    place = np.empty(n, dtype=np.int32)  # each scanned row's place in the frame
    place[order] = np.arange(n, dtype=np.int32)
    del order
    encoders = [
        frames._Encoder(name, kind, n, _GROW_DTYPE[kind], growing=True)
        for name, kind in frames.framed_columns(src, batches.types)
    ]
    at = 0
    again = 0
    sql = frames.select_sql(src, opt, encoders)
    base = 4 if opt is not None else 3
    for out in batches.scan(sql, words):
        end = at + out.num_rows
        if end > n:
            raise RuntimeError("a sealed version read differently twice")
        again = (again + _digest(arrow.numpy_of(out.column(2)), at)) & _MASK
        for j, e in enumerate(encoders):
            e.add(out.column(base + j), at, place[at:end])  # no named view to outlive place
        at = end
    # The same rows in the same order as the first pass, or no frame from this.
    if at != n or again != check:
        raise RuntimeError("a sealed version read differently twice")
    del place
    for e in encoders:
        e.close(n)
    columns = [
        frames.Column(e.kind, e.values, e.null, tuple(sorted(e.codes, key=e.codes.__getitem__)))
        for e in encoders
        if e.ok
    ]
    built = frames.assemble(n, new_unit, pairs, oo_sorted, columns, encoders, pairs=True)
    memory.release()
    return built


class _Batches:
    """One table of a sealed version through DuckDB, batch by batch: each batch is
    loaded into a fresh scratch table made by the table's own CREATE statement (so
    its types are the version's) and `sql` runs on it."""

    def __init__(
        self, path: Path, key: DataKey, dataset: str, version: int, table: str, src_sql: str
    ) -> None:
        self.args = (path, key, dataset, version, table)
        self.table, self.src_sql = frames._q(table), src_sql
        self.types: dict[str, str] = {}

    def scan(self, sql: str, words: list[int]) -> Iterator[pa.RecordBatch]:
        con = duckdb.connect(":memory:")
        try:
            con.execute("SET temp_directory = ''")  # never spill plaintext to disk
            con.execute("SET enable_external_access = false")
            # A batch at a time needs little: keep DuckDB from caching freed memory.
            con.execute("SET allocator_flush_threshold = '16MiB'")
            con.execute("SET allocator_bulk_deallocation_flush_threshold = '16MiB'")
            for create, batch in storage.table_batches(*self.args):
                con.execute(f"DROP TABLE IF EXISTS {self.table}")
                con.execute(create)
                if not self.types:
                    described = con.execute(
                        f"DESCRIBE WITH src AS ({self.src_sql}) SELECT * FROM src"
                    )
                    self.types = {str(row[0]): str(row[1]) for row in described.fetchall()}
                con.register(_LOAD, batch)
                try:
                    con.execute(f"INSERT INTO {self.table} SELECT * FROM {_LOAD}")
                finally:
                    con.unregister(_LOAD)
                del batch
                yield from con.sql(sql, params=words).to_arrow_reader(frames._BATCH_ROWS)
        finally:
            con.close()
        pa.default_memory_pool().release_unused()


def _first_pass(
    batches: _Batches, src: schemas.Source, opt: str | None, words: list[int], cap: int
) -> tuple[int, Any, Any, Any, Any, int] | None:
    """The unit hashes, ranks and opt-out flags in scan order (None: no rows)."""
    hu = np.empty(cap, dtype=np.uint64)
    h2 = np.empty(cap, dtype=np.uint32)  # low bits suffice to tell a collision apart
    r = np.empty(cap, dtype=np.uint64)
    oo = np.empty(cap, dtype=np.bool_) if opt is not None else None
    at = 0
    check = 0
    for out in batches.scan(frames.select_sql(src, opt, []), words):
        end = at + out.num_rows
        if end > len(hu):
            hu, h2, r = frames.grow(hu, end), frames.grow(h2, end), frames.grow(r, end)
            oo = frames.grow(oo, end) if oo is not None else None
        hu[at:end] = arrow.numpy_of(out.column(0))
        h2[at:end] = arrow.numpy_of(out.column(1))
        r[at:end] = arrow.numpy_of(out.column(2))
        check = (check + _digest(r[at:end], at)) & _MASK
        if oo is not None:
            oo[at:end] = arrow.numpy_of(out.column(3))
        at = end
    if not batches.types:
        return None
    trim = frames.trim
    return at, trim(hu, at), trim(h2, at), trim(r, at), trim(oo, at), check


_MASK: Final = (1 << 64) - 1


def _digest(r: Any, at: int) -> int:
    """Sum of rank x (row number + 1), mod 2^64: the second pass must see each row's
    rank where the first did."""
    weights = np.arange(at + 1, at + 1 + len(r), dtype=np.uint64)
    weights *= r
    return int(weights.sum(dtype=np.uint64))


_GROW_DTYPE: Final[dict[str, Any]] = {
    "code": np.int16,
    "bool": np.int8,
    "date": np.int32,
    "int": np.int8,  # widened by the batches that need it
}
