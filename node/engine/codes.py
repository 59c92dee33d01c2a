"""Frame columns as small unsigned codes, and the executor's parts gathered from them.

A filter's or dimension's part of a row's cell comes from a lookup table over the
column's codes (execute.py); `sum_parts` adds a query's parts chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from tessera.node.engine.bound import OUT
from tessera.node.engine.frame import Column, Frame

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

    def values(self) -> Ints:
        return np.arange(self.size, dtype=np.int64) + self.lo

    def lut(self, table: npt.NDArray[Any], null: Any) -> Lut:
        full = np.concatenate((np.array([null], dtype=table.dtype), table))
        return Lut(full, self.codes)

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

    def gather(self) -> npt.NDArray[Any]:
        return np.take(self.table, self.codes)


# Rows per chunk when parts are summed: small enough that a chunk's gathers and sums
# stay in cache (np.take widens its indices to intp: at 10^7 rows, whole-array
# gathers measured memory-bound, about 6 ns a row against 1.5 at 10^6).
CHUNK = 1 << 16


def sum_parts(parts: list[Part | Lut], n: int) -> Part:
    """Each row's cell: the sum of its parts, computed chunk by chunk."""
    cell = np.zeros(n, dtype=np.int32)
    if not parts:
        return cell
    tmp = np.empty(min(n, CHUNK), dtype=np.int32)
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        out = cell[a:b]
        for i, p in enumerate(parts):
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
    return cell


def coded(frame: Frame, col: Column, name: str, what: str = "") -> Coded | None:
    """`name` coded (a date column by day, or with what="month" by month), or None
    when its values span too wide a range for 16-bit codes."""
    kind = col.kind

    def make() -> Coded | None:
        values: npt.NDArray[Any] = col.values
        if kind in ("code", "bool"):  # -1 is NULL already
            size = len(col.dictionary) if kind == "code" else 2
            return Coded((values + 1).astype(np.uint8 if size < 255 else np.uint16), 0, size)
        assert col.null is not None
        if what == "month":
            p = frame.date_parts(name)
            values = p.year * 12 + p.month - 1
        valid = ~col.null
        if not valid.any():
            return Coded(np.zeros(frame.n, dtype=np.uint8), 0, 0)
        lo, hi = int(values[valid].min()), int(values[valid].max())
        if hi - lo >= (1 << 16) - 2:
            return None
        dtype = np.uint8 if hi - lo < 254 else np.uint16
        codes: npt.NDArray[np.unsignedinteger[Any]] = (values.astype(np.int64) - (lo - 1)).astype(
            dtype
        )
        codes[col.null] = 0
        return Coded(codes, lo, hi - lo + 1)

    got: Coded | None = frame.cached(("coded", name, what), make)
    return got
