"""A dataset version's source as numpy columns, sorted by (unit, keyed rank).

Built once per (version, source, node secret) by one streaming DuckDB scan of the
source's SQL, then sorted in numpy. The rank is computed by DuckDB with exactly the
compiler's expression, so the frame's order within a unit is the compiler's keyed
order; it depends on the node secret, so a frame lives only in memory (never
persisted) and is keyed by the secret's order words. A one-table source is built
from the sealed file instead, without the DuckDB copy (stream.py), with the same SQL.

Columns are encoded for numpy: code/text columns as small dictionary codes (NULL is
-1, so a lookup table with one extra last slot maps NULL by negative indexing), dates
as int32 days since 1970-01-01 with a NULL mask, integers as int64 with a NULL mask,
booleans as int8 (-1 NULL). A text column with too many distinct values (identifiers)
is left out: a template that reads it is answered by the compiler instead.

The compiler orders a unit's records by (rank >> 14, cell); the frame orders them by
rank. The two agree unless two records of one unit share (rank >> 14) yet differ in
some encoded column (then their cells might differ and their order with them): the
frame counts such pairs in `ties`, and the executor declines any frame with ties
(about 2^-50 per pair of records; identical records share their rank and are
interchangeable, so they are no tie).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final, Literal, NamedTuple

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from tessera import schemas
from tessera.node.compiler import order_words
from tessera.node.engine import arrow, memory
from tessera.node.engine.order import count_differing, count_ties, sort_keys

# More distinct values than this and a text column is an identifier, not a code.
MAX_DICTIONARY: Final = 4096
_BATCH_ROWS: Final = 1 << 20
# Dates outside these years are left to the compiler (DuckDB's date range is wider
# than numpy's simple day arithmetic needs to handle).
_MIN_DAY: Final = -25567  # 1900-01-01
_MAX_DAY: Final = 116528  # 2289-01-01
_EPOCH: Final = date(1970, 1, 1)

Kind = Literal["code", "int", "date", "bool"]
Array = npt.NDArray[Any]


class SmallCodes(NamedTuple):
    """Values as small unsigned codes: 0 is NULL, code i + 1 the value lo + i."""

    codes: npt.NDArray[np.unsignedinteger[Any]]
    lo: int
    size: int


# Rows per chunk when a column is converted (no whole-column int64 temporary).
_CONVERT_ROWS: Final = 1 << 16


def small_codes(values: Array, null: npt.NDArray[np.bool_]) -> SmallCodes | None:
    """`values` (NULL rows where `null`) as 8- or 16-bit codes, or None when they span
    too wide a range."""
    valid = ~null
    if not valid.any():
        return SmallCodes(np.zeros(len(values), dtype=np.uint8), 0, 0)
    # Over the non-NULL rows without copying them out.
    lo = int(np.min(values, where=valid, initial=np.iinfo(values.dtype).max))
    hi = int(np.max(values, where=valid, initial=np.iinfo(values.dtype).min))
    del valid
    if hi - lo >= (1 << 16) - 2:
        return None
    dtype = np.uint8 if hi - lo < 254 else np.uint16
    codes: npt.NDArray[np.unsignedinteger[Any]] = np.empty(len(values), dtype=dtype)
    base = np.int64(lo - 1)
    for a in range(0, len(values), _CONVERT_ROWS):
        codes[a : a + _CONVERT_ROWS] = values[a : a + _CONVERT_ROWS].astype(np.int64) - base
    codes[null] = 0
    return SmallCodes(codes, lo, hi - lo + 1)


@dataclass(frozen=True)
class Column:
    kind: Kind
    # codes int8/int16 (-1 NULL) | int64 | int32 days | int8 (-1 NULL); None for a date
    # column held as day codes only (`days`): `values` makes its days when first asked.
    stored: Array | None
    null: npt.NDArray[np.bool_] | None = None  # int and date columns
    dictionary: tuple[str, ...] = ()  # code columns: the string of each code
    days: SmallCodes | None = None  # date columns: each row's day as a small code

    @property
    def values(self) -> Array:
        v = self.stored
        if v is None:
            assert self.days is not None and self.null is not None
            d = self.days
            v = np.empty(len(d.codes), dtype=np.int32)
            for a in range(0, len(v), _CONVERT_ROWS):
                v[a : a + _CONVERT_ROWS] = d.codes[a : a + _CONVERT_ROWS]
            v += np.int32(d.lo - 1)
            v[self.null] = 0  # as the encoders leave a NULL date
            object.__setattr__(self, "stored", v)  # kept: a template reads the days
        return v


def day_coded(col: Column) -> Column:
    """A date column held as day codes only (a quarter or half of its int32 days); the
    executor's date filters read the codes, and anything else the days, made again."""
    if col.kind != "date" or col.null is None or col.stored is None:
        return col
    days = small_codes(col.stored, col.null)
    if days is None:
        return col
    return Column(col.kind, None, col.null, col.dictionary, days)


@dataclass(frozen=True)
class DateParts:
    """A date column split for completed-years arithmetic (DuckDB's date_sub)."""

    year: npt.NDArray[np.int32]
    month: npt.NDArray[np.int32]
    day: npt.NDArray[np.int32]
    month_end: npt.NDArray[np.bool_]  # the last day of its month


@dataclass
class Frame:
    n: int
    unit_of_row: npt.NDArray[np.int32]
    starts: npt.NDArray[np.int32]  # first row of each unit
    opted_out: npt.NDArray[np.bool_] | None  # per row: its unit has an opted-out record
    columns: dict[str, Column]
    ties: int
    _cache: dict[Any, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def n_units(self) -> int:
        return len(self.starts)

    @property
    def counts(self) -> npt.NDArray[np.int32]:
        """Records of each unit (made when asked: 4 bytes a unit not kept)."""
        counts = np.empty(len(self.starts), dtype=np.int32)
        if len(self.starts):
            np.subtract(self.starts[1:], self.starts[:-1], out=counts[:-1])
            counts[-1] = self.n - self.starts[-1]
        return counts

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """A derived array, made once (frames are shared between threads)."""
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = make()
        with self._lock:
            return self._cache.setdefault(key, value)

    def date_parts(self, name: str) -> DateParts:
        col = self.columns[name]
        return self.cached(("parts", name), lambda: date_parts(col.values))  # type: ignore[no-any-return]


def date_parts(days: npt.NDArray[np.int32]) -> DateParts:
    d = days.astype("datetime64[D]")
    months = d.astype("datetime64[M]")
    years = months.astype("datetime64[Y]")
    month0 = months.astype(np.int64) - years.astype(np.int64) * 12
    day = (d - months).astype(np.int64) + 1
    next_month = (months + 1).astype("datetime64[D]")
    month_end = (next_month - d).astype(np.int64) == 1
    return DateParts(
        (years.astype(np.int64) + 1970).astype(np.int32),
        (month0 + 1).astype(np.int32),
        day.astype(np.int32),
        month_end,
    )


def _days(d: Any) -> int:
    return int((d - _EPOCH).days)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Encoder:
    """Fills one column's numpy array batch by batch. With the row count known (`scan`)
    it is allocated once at its narrowest type; `growing` (stream.py), `n` is only a
    capacity hint: the array grows when a batch needs it (an integer column widens
    when a batch needs it), and `close` trims it."""

    def __init__(self, name: str, kind: Kind, n: int, dtype: Any, growing: bool = False) -> None:
        self.name, self.kind, self.growing = name, kind, growing
        self.values: Array = np.empty(n, dtype=dtype)
        self.null = np.empty(n, dtype=np.bool_) if kind in ("int", "date") else None
        self.codes: dict[str, int] = {}
        self.ok = True

    def add(self, arr: pa.Array, at: int, pos: npt.NDArray[np.int32] | None = None) -> None:
        """The batch `arr` as rows at..at+len(arr), or (`pos`) at those rows."""
        if not self.ok:
            return
        end = at + len(arr)
        where: Any = slice(at, end) if pos is None else pos
        if self.growing and end > len(self.values):
            self.values = grow(self.values, end)
            if self.null is not None:
                self.null = grow(self.null, end)
        if self.kind == "code":
            enc = pc.dictionary_encode(arr)
            words = enc.dictionary.to_pylist()
            remap = np.empty(len(words) + 1, dtype=np.int16)
            remap[-1] = -1
            for i, w in enumerate(words):
                remap[i] = self.codes.setdefault(w, len(self.codes))
            if len(self.codes) > MAX_DICTIONARY:
                self.ok = False  # an identifier column: left to the compiler
                self.values = np.empty(0, dtype=np.int16)
                self.null = None
                return
            idx = arrow.filled(enc.indices, -1)
            self.values[where] = remap[idx]
        elif self.kind == "bool":
            v = arrow.filled(pc.cast(arr, pa.int8()), -1)
            self.values[where] = v
        else:
            assert self.null is not None
            target = pa.int32() if self.kind == "date" else pa.int64()
            self.null[where] = arrow.numpy_of(arr.is_null())
            v = arrow.filled(pc.cast(arr, target), 0)
            if self.growing and self.kind == "int" and len(v):
                # Widened only as far as the values seen need (NULLs, as 0, never
                # widen): the type `scan` picks from the whole column's min and max.
                wide = np.promote_types(_narrowest(int(v.min()), int(v.max())), self.values.dtype)
                if wide != self.values.dtype:
                    self.values = self.values.astype(wide)
            self.values[where] = v

    def close(self, n: int) -> None:
        """A growing column trimmed to `n` rows; a date column outside numpy's checked
        range left out, as `scan` leaves it out from DuckDB's min and max."""
        if not self.growing or not self.ok:
            return
        values = trim(self.values, n)
        assert values is not None
        self.values, self.null = values, trim(self.null, n)
        self._narrow()
        if self.kind != "date" or self.null is None:
            return
        valid = ~self.null
        if not valid.any():
            return
        # min and max over the non-NULL rows, without copying them out.
        lo = int(np.min(self.values, where=valid, initial=np.iinfo(np.int32).max))
        hi = int(np.max(self.values, where=valid, initial=np.iinfo(np.int32).min))
        del valid
        if lo < _MIN_DAY or hi > _MAX_DAY:
            self.ok = False
            self.values, self.null = np.empty(0, dtype=np.int32), None

    def _narrow(self) -> None:
        if self.kind == "code" and len(self.codes) < 127 and self.values.dtype != np.int8:
            self.values = self.values.astype(np.int8)  # half the bytes a row, same codes

    def finish(self, order: npt.NDArray[np.int32]) -> Column | None:
        if not self.ok:
            return None
        self._narrow()
        values = self.values[order]
        del self.values
        null = self.null[order] if self.null is not None else None
        self.null = None
        words = tuple(sorted(self.codes, key=self.codes.__getitem__))
        return Column(self.kind, values, null, words)


def grow(a: Array, need: int) -> Array:
    """`a` with room for at least `need` rows (half as much again, at least)."""
    out = np.empty(max(need, len(a) + len(a) // 2, 1 << 16), dtype=a.dtype)
    out[: len(a)] = a
    return out


def trim(a: Array | None, n: int) -> Array | None:
    """The first `n` rows of `a`, without keeping a larger buffer alive."""
    if a is None or len(a) == n:
        return a
    return a[:n].copy()


def _narrowest(lo: int, hi: int) -> type[np.signedinteger[Any]]:
    for t in (np.int8, np.int16, np.int32):
        info = np.iinfo(t)
        if info.min <= lo and hi <= info.max:
            return t
    return np.int64


_KINDS: Final[dict[str, Kind]] = {
    "VARCHAR": "code",
    "DATE": "date",
    "BIGINT": "int",
    "INTEGER": "int",
    "SMALLINT": "int",
    "TINYINT": "int",
    "BOOLEAN": "bool",
}


def build(
    con: duckdb.DuckDBPyConnection, dataset: str, source: str, order_key: bytes
) -> Frame | None:
    """The frame of one source of the version open on `con`, or None when the source
    cannot be framed exactly (two units with the same 64-bit hash: detected by a
    second hash of the unit that differs)."""
    return finish(scan(con, dataset, source, order_key))


@dataclass
class Scan:
    """A source read into numpy, in scan order: `finish` sorts it into a frame (the
    version's DuckDB connection is no longer needed by then)."""

    n: int
    keys: list[Array]  # hash(unit), a second hash of the unit, the keyed rank
    opted_out: npt.NDArray[np.bool_] | None
    encoders: list[_Encoder]


def framed_columns(src: schemas.Source, types: dict[str, str]) -> list[tuple[str, Kind]]:
    """The source's columns a frame holds (by their DuckDB types), unit aside."""
    return [
        (c.name, _KINDS[types[c.name]])
        for c in src.columns
        if c.name != src.unit and types.get(c.name, "") in _KINDS
    ]


def select_sql(src: schemas.Source, opt: str | None, encoders: list[_Encoder]) -> str:
    """The scan: unit hashes, the compiler's keyed rank (parameters: the order words),
    the opt-out flag, then the encoders' columns. Each output depends only on its own
    row, so scanning a table batch by batch gives the rows a whole scan gives."""
    cols = "".join(f", {_q(e.name)}" for e in encoders)
    out_sql = f", coalesce({_q(opt)}, TRUE) AS _oo" if opt is not None else ""
    # _hu groups the units; _h2 (a second hash of the unit) tells two units whose
    # _hu collide apart; _r is the compiler's keyed rank, bound the same way.
    return (
        f"WITH src AS ({src.sql}) SELECT hash(_u) AS _hu, "
        f"hash(CAST(_u AS VARCHAR) || '/') AS _h2, _r{out_sql}{cols} "
        f"FROM (SELECT {_q(src.unit)} AS _u, "
        "hash(xor(hash(xor(hash(src), ?::UBIGINT)), ?::UBIGINT)) AS _r, * FROM src) "
        "WHERE _u IS NOT NULL"
    )


def scan(con: duckdb.DuckDBPyConnection, dataset: str, source: str, order_key: bytes) -> Scan:
    """One streaming DuckDB scan of the source, with the compiler's keyed rank."""
    ds = schemas.dataset(dataset)
    assert ds is not None
    src = ds.sources[source]
    k1, k2 = order_words(order_key)
    cur = con.cursor()
    try:
        described = cur.execute(f"DESCRIBE WITH src AS ({src.sql}) SELECT * FROM src")
        types = {str(row[0]): str(row[1]) for row in described.fetchall()}
        framed = framed_columns(src, types)
        # The row count and each int or date column's range first: every array is
        # allocated once, at its narrowest type.
        ranged = [name for name, kind in framed if kind in ("int", "date")]
        stats_sql = "".join(f", min({_q(c)}), max({_q(c)})" for c in ranged)
        (row,) = cur.execute(
            f"WITH src AS ({src.sql}) SELECT count({_q(src.unit)}){stats_sql} FROM src"
        ).fetchall()
        n = int(row[0])
        bounds = {c: (row[1 + 2 * i], row[2 + 2 * i]) for i, c in enumerate(ranged)}
        encoders = []
        for name, kind in framed:
            dtype: Any = {"code": np.int16, "bool": np.int8, "date": np.int32}.get(kind)
            lo, hi = bounds.get(name, (None, None))
            if kind == "date" and lo is not None:
                if _days(lo) < _MIN_DAY or _days(hi) > _MAX_DAY:
                    continue  # dates numpy's day arithmetic is not checked for
            if kind == "int":
                dtype = _narrowest(int(lo), int(hi)) if lo is not None else np.int8
            encoders.append(_Encoder(name, kind, n, dtype))
        opt = ds.opt_out_column
        sql = select_sql(src, opt, encoders)
        reader = cur.sql(sql, params=[k1, k2]).to_arrow_reader(_BATCH_ROWS)
        hu = np.empty(n, dtype=np.uint64)
        h2 = np.empty(n, dtype=np.uint32)  # low bits suffice to tell a collision apart
        r = np.empty(n, dtype=np.uint64)
        oo = np.empty(n, dtype=np.bool_) if opt is not None else None
        base = 4 if opt is not None else 3
        at = 0
        for batch in reader:
            end = at + batch.num_rows
            hu[at:end] = arrow.numpy_of(batch.column(0))
            h2[at:end] = arrow.numpy_of(batch.column(1))
            r[at:end] = arrow.numpy_of(batch.column(2))
            if oo is not None:
                oo[at:end] = arrow.numpy_of(batch.column(3))
            for j, e in enumerate(encoders):
                e.add(batch.column(base + j), at)
            at = end
        assert at == n
        del reader
    finally:
        cur.close()
    pa.default_memory_pool().release_unused()
    return Scan(n, [hu, h2, r], oo, encoders)


def finish(scanned: Scan) -> Frame | None:
    """Sort a scan into the frame (None: two units' hashes collide)."""
    n, oo, encoders = scanned.n, scanned.opted_out, scanned.encoders
    sorted_ = sort_keys(scanned.keys)  # empties the list: each key goes once used
    if sorted_ is None:
        return None
    order, new_unit, r = sorted_
    del sorted_
    columns = [col for e in encoders if (col := e.finish(order)) is not None]
    oo_sorted = oo[order] if oo is not None else None
    del order, oo
    built = assemble(n, new_unit, r, oo_sorted, columns, encoders)
    memory.release()
    return built


def assemble(
    n: int,
    new_unit: npt.NDArray[np.bool_],
    r: npt.NDArray[np.uint64] | Array,
    oo: npt.NDArray[np.bool_] | None,
    columns: list[Column],
    encoders: list[_Encoder],
    pairs: bool = False,
) -> Frame:
    """The frame from its rows in (unit, rank) order: `columns` are those of the
    encoders still `ok`, in their order; `r` the ranks in that order, or (`pairs`)
    their `tie_pairs`."""
    unit_of_row = np.cumsum(new_unit, dtype=np.int32)
    unit_of_row -= 1
    # In chunks: flatnonzero's whole-column int64 result would be the assembly's peak.
    step = 1 << 20
    parts = [np.flatnonzero(new_unit[a : a + step]).astype(np.int32) + a for a in range(0, n, step)]
    starts = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    del parts
    opted_out = None
    if oo is not None:
        per_unit = np.bitwise_or.reduceat(oo, starts) if n else np.zeros(0, np.bool_)
        opted_out = per_unit[unit_of_row]
    ties = count_differing(r, columns) if pairs else count_ties(r, new_unit, columns)
    names = [e.name for e in encoders if e.ok]
    kept = [day_coded(c) for c in columns]
    del columns
    return Frame(n, unit_of_row, starts, opted_out, dict(zip(names, kept, strict=True)), ties)
