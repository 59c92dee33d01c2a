"""Frame columns as small unsigned codes, and the executor's parts gathered from them.

A filter's or dimension's part of a row's cell comes from a lookup table over the
column's codes (execute.py); `sum_parts` adds a query's parts chunk by chunk. Parts
over columns with small code ranges are fused first: one gather from one table over
a combined code per row (cached on the frame) instead of one gather per column.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from tessera.node.engine.bound import OUT
from tessera.node.engine.frame import Column, Frame, small_codes

Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
Part = npt.NDArray[np.int32]


@dataclass(frozen=True)
class Coded:
    """A column as small unsigned codes: 0 is NULL, code i + 1 the value lo + i (for
    dictionary and boolean columns, lo + i is the dictionary code or 0/1). A lookup
    table is gathered with np.take (non-negative small indices: the fastest gather
    measured)."""

    codes: npt.NDArray[np.unsignedinteger[Any]]
    lo: int
    size: int
    key: Any = None  # names the codes for a fused cache (sum_parts)

    def values(self) -> Ints:
        return np.arange(self.size, dtype=np.int64) + self.lo

    def lut(self, table: npt.NDArray[Any], null: Any) -> Lut:
        full = np.concatenate((np.array([null], dtype=table.dtype), table))
        return Lut(full, self.codes, self.key)

    def parts(self, index: npt.NDArray[Any], null_index: int, stride: int) -> Lut:
        """Parts from each value's declared index (-1: outside)."""
        table = np.where(index >= 0, index.astype(np.int64) * stride, OUT).astype(np.int32)
        null = np.int32(null_index * stride) if null_index >= 0 else OUT
        return self.lut(table, null)

    def passes(self, table: Mask, null: bool) -> Lut:
        return self.lut(np.where(table, 0, OUT).astype(np.int32), 0 if null else OUT)


class Lut(NamedTuple):
    """A part not yet gathered: table[codes], taken chunk by chunk by sum_parts."""

    table: npt.NDArray[Any]
    codes: npt.NDArray[np.unsignedinteger[Any]]
    key: Any = None  # names `codes` (the same key, the same codes): None, never fused

    def gather(self) -> npt.NDArray[Any]:
        return np.take(self.table, self.codes)


# Rows per chunk when parts are summed: small enough that a chunk's gathers and sums
# stay in cache (np.take widens its indices to intp: at 10^7 rows, whole-array
# gathers measured memory-bound, about 6 ns a row against 1.5 at 10^6).
CHUNK = 1 << 16


# Fused tables at most this long (int32: 16 KiB, stays in L1); the combined codes are
# uint16, 2 bytes a row per fused column set, at most _FUSED_KEPT sets kept per frame.
_FUSE_MAX = 1 << 12
_FUSED_KEPT = 3
_FUSED_LOCK = threading.Lock()


def fuse(frame: Frame, parts: list[Part | Lut]) -> list[Part | Lut]:
    """`parts` with the keyed lookups of small tables fused into one: table[c1 * s2 + c2]
    is t1[c1] + t2[c2] (sums of parts are what counts, so fusing changes no cell)."""
    small = sorted(
        (p for p in parts if isinstance(p, Lut) and p.key is not None),
        key=lambda p: len(p.table),
    )
    group: list[Lut] = []
    size = 1
    for p in small:
        if size * len(p.table) > _FUSE_MAX:
            break
        group.append(p)
        size *= len(p.table)
    if len(group) < 2:
        return parts
    key = tuple(p.key for p in group)
    table = np.zeros(1, dtype=np.int64)
    for p in group:
        table = (table[:, None] + p.table.astype(np.int64)[None, :]).ravel()
    fused = Lut(table.astype(np.int32), _fused_codes(frame, key, group), None)
    taken = {id(p) for p in group}
    return [fused, *(p for p in parts if id(p) not in taken)]


def _fused_codes(frame: Frame, key: tuple[Any, ...], group: list[Lut]) -> npt.NDArray[np.uint16]:
    kept: dict[Any, npt.NDArray[np.uint16]] = frame.cached(("fused",), dict)
    with _FUSED_LOCK:
        got = kept.get(key)
    if got is not None:
        return got
    out = np.zeros(frame.n, dtype=np.uint16)
    for p in group:  # c1 * s2 + c2, ...: below _FUSE_MAX at every step
        out *= np.uint16(len(p.table))
        out += p.codes
    with _FUSED_LOCK:  # the oldest set goes first
        while key not in kept and len(kept) >= _FUSED_KEPT:
            del kept[next(iter(kept))]
        return kept.setdefault(key, out)


def flag(mask: Mask, key: Any) -> Lut:
    """_OUT where `mask` (a per-row bool array of the frame, named by `key`), else 0."""
    return Lut(np.array([0, OUT], dtype=np.int32), mask.view(np.uint8), key)


_CELLS_KEPT = 1


@contextmanager
def cells(frame: Frame) -> Iterator[Part]:
    """A per-row int32 buffer for one query's cells, reused: a fresh 4-bytes-a-row array
    each query costs its page faults again (at 10^7 rows, glibc maps it anew each time).
    At most _CELLS_KEPT are kept per frame; a concurrent query gets its own."""
    pool: list[Part] = frame.cached(("cells",), list)
    with _FUSED_LOCK:
        buf = pool.pop() if pool else None
    if buf is None:
        buf = np.empty(frame.n, dtype=np.int32)
    try:
        yield buf
    finally:
        with _FUSED_LOCK:
            if len(pool) < _CELLS_KEPT:
                pool.append(buf)


def sum_parts(parts: list[Part | Lut], n: int, cell: Part | None = None) -> Part:
    """Each row's cell: the sum of its parts, computed chunk by chunk. A part that is 0
    on one run of codes and _OUT elsewhere (a range or date filter) is a range test on
    the codes instead of a gather: a failing row's cell is set to _OUT (negative, as
    the sum would be). Into `cell` when given (overwritten)."""
    if cell is None:
        cell = np.empty(n, dtype=np.int32)
    rest: list[Part | Lut] = []
    ranges: list[tuple[npt.NDArray[np.unsignedinteger[Any]], Any, Any]] = []
    for p in parts:
        if not isinstance(p, Lut):
            rest.append(p)
            continue
        lut: Lut = p
        got = _range(lut)
        if got is None:
            rest.append(lut)
        elif got[0] > 0 or got[1] < len(lut.table) - 1:  # else every row passes
            dt = lut.codes.dtype.type
            ranges.append((lut.codes, dt(got[0]), dt(got[1] - got[0])))
    if not rest:
        cell[...] = 0
    if not rest and not ranges:
        return cell
    tmp = np.empty(min(n, CHUNK), dtype=np.int32)
    fails = np.empty(min(n, CHUNK), dtype=np.bool_)
    shifted = {c.dtype: np.empty(min(n, CHUNK), dtype=c.dtype) for c, _, _ in ranges}
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        out = cell[a:b]
        for i, p in enumerate(rest):
            if isinstance(p, Lut):
                if i == 0:
                    np.take(p.table, p.codes[a:b], out=out)
                    continue
                np.take(p.table, p.codes[a:b], out=tmp[: b - a])
                out += tmp[: b - a]
            elif i == 0:
                out[...] = p[a:b]
            else:
                out += p[a:b]
        for codes, lo, span in ranges:
            # Outside lo..lo + span exactly when code - lo (wrapping) exceeds span.
            t = shifted[codes.dtype][: b - a]
            np.subtract(codes[a:b], lo, out=t)
            np.greater(t, span, out=fails[: b - a])
            np.copyto(out, OUT, where=fails[: b - a])
    return cell


def _range(p: Lut) -> tuple[int, int] | None:
    """(first, last) when p's table is 0 on codes first..last and _OUT on the others."""
    t = p.table
    if t.dtype != np.int32 or p.codes.dtype not in (np.uint8, np.uint16):
        return None
    ok = t == 0
    where = np.flatnonzero(ok)
    if not len(where) or not (t[~ok] == OUT).all():
        return None
    lo, hi = int(where[0]), int(where[-1])
    return (lo, hi) if hi - lo + 1 == len(where) else None


def coded(frame: Frame, col: Column, name: str, what: str = "") -> Coded | None:
    """`name` coded (a date column by day, or with what="month" by month), or None
    when its values span too wide a range for 16-bit codes."""
    kind = col.kind

    def make() -> Coded | None:
        if kind in ("code", "bool"):  # -1 is NULL already
            size = len(col.dictionary) if kind == "code" else 2
            dt = np.uint8 if size < 255 else np.uint16
            return Coded((col.values + 1).astype(dt), 0, size, ("coded", name, what))
        assert col.null is not None
        if kind == "date" and what == "" and col.days is not None:  # held so already
            return Coded(col.days.codes, col.days.lo, col.days.size, ("coded", name, what))
        values: npt.NDArray[Any]
        if what == "month":
            p = frame.date_parts(name)
            values = p.year * 12 + p.month - 1
        else:
            values = col.values
        got = small_codes(values, col.null)
        return None if got is None else Coded(got.codes, got.lo, got.size, ("coded", name, what))

    got: Coded | None = frame.cached(("coded", name, what), make)
    return got
