"""Capped record counts and sums with one parameter-dependent filter, from tables
made once per (frame, template's fixed parts).

Under a cap of `cap` records per unit, a row counts when its parts pass and fewer than
`cap` counting rows come before it in its unit's keyed order. A row ranked below `cap`
in its unit has fewer than `cap` rows of any kind before it, so it counts exactly when
its own parts pass, whatever the rest of its unit does. Those rows ("early": nearly
all, and every row of a unit with at most `cap` records) are counted once into
prefix sums by (the varying filter's column code, cell), with the fixed parts applied;
a query adds up the runs of codes its filter passes: O(codes x cells), not O(rows).

Only the "late" rows (rank `cap` or more) are decided per query, with the rows of
their units before them:
- units with at most _LEVELS records are held rank by rank, biggest units first, so
  rank j's rows are one contiguous slice, and a running count per unit decides them
  with no gathers;
- the few bigger units, row by row with a segmented running count.

The vectors are the executor's full pass's (execute.py) for every values;
tests/unit/node/engine/test_cube.py checks them against the compiler.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.node.engine import codes, memory
from tessera.node.engine.bound import OUT
from tessera.node.engine.codes import Lut
from tessera.node.engine.frame import Frame

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Codes = npt.NDArray[np.uint16]
Mask = npt.NDArray[np.bool_]
# Weights: a lookup over a column's codes or one float per row (execute.py's sums),
# made when a table is: (a key naming them, how to make them).
Weights = Lut | Floats
WeightsOf = tuple[Any, Callable[[], Weights]]

# Tables are made only when small next to a frame: codes x cells at most this.
_MAX_ENTRIES = 1 << 20
# Units with more records than this are decided row by row (`_Big`), not rank by rank.
_LEVELS = 32
# Codes are uint16, with one value kept for "a fixed part fails": tables narrower.
_MAX_CODES = int(np.iinfo(np.uint16).max)
# Tables kept per frame: at most this many, holding at most _KEPT_BYTES between them
# (the newest is kept whatever its size; a table evicted is made again when asked).
_KEPT = 4
_KEPT_BYTES = 64 << 20
_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Ranks:
    """Units over the cap with at most _LEVELS records, biggest first, rank by rank:
    rank j's slice holds the j-th row of each of the first widths[j] units. `codes`
    are the varying column's (the table's size where a fixed part fails: never
    passes); `cells` and `weights` are those of ranks `cap` and on."""

    codes: Codes
    widths: tuple[int, ...]
    cells: npt.NDArray[np.int32]
    weights: Floats | None


@dataclass(frozen=True)
class _Big:
    """The rows of units with more than _LEVELS records, in frame order: where each
    row's unit starts (within these rows), and whether the row is late."""

    codes: Codes
    head: npt.NDArray[np.intp]
    late: Mask
    cells: npt.NDArray[np.int32]
    weights: Floats | None


@dataclass(frozen=True)
class _Table:
    counts: Ints  # (codes + 1, cells): prefix sums of the early rows whose fixed parts pass
    sums: Floats | None
    ranks: _Ranks | None
    big: _Big | None

    @property
    def nbytes(self) -> int:
        return _nbytes(self) + sum(_nbytes(p) for p in (self.ranks, self.big) if p is not None)


def _nbytes(held: Any) -> int:
    """The bytes of a dataclass's numpy arrays."""
    values = (getattr(held, f.name) for f in fields(held))
    return sum(v.nbytes for v in values if isinstance(v, np.ndarray))


def answer(
    frame: Frame,
    fixed: list[Lut],
    varying: Lut,
    cap: int,
    n_cells: int,
    weights: WeightsOf | None = None,
) -> tuple[Ints, Floats | None] | None:
    """(counts, sums) per cell of the rows that count, or None when this shape is not
    one a table serves (then the executor's full pass answers). `fixed` are the parts
    that are the same for every values, `varying` the one filter's that is not."""
    size = len(varying.table)
    if (
        varying.key is None
        or any(p.key is None for p in fixed)
        or size >= _MAX_CODES
        or (size + 1) * n_cells > _MAX_ENTRIES
        or not np.isin(varying.table, np.array([0, OUT], dtype=np.int32)).all()
    ):
        return None
    key = (
        varying.key,
        tuple((p.key, p.table.dtype.str, p.table.tobytes()) for p in fixed),
        cap,
        n_cells,
        None if weights is None else weights[0],
    )
    table = _kept(frame, key, lambda: _make(frame, fixed, varying, cap, n_cells, weights))
    passes = varying.table == 0
    edges = np.flatnonzero(np.diff(passes.astype(np.int8), prepend=0, append=0))
    first, end = edges[0::2], edges[1::2]  # the runs of codes that pass
    counts = table.counts[end].sum(axis=0) - table.counts[first].sum(axis=0)
    sums = None
    if table.sums is not None:
        sums = table.sums[end].sum(axis=0) - table.sums[first].sum(axis=0)
    if not len(first):
        return counts, sums
    test = _Test(passes, (int(first[0]), int(end[0] - 1)) if len(first) == 1 else None)
    late = [] if table.ranks is None else [_by_rank(table.ranks, test, cap, n_cells)]
    late += [] if table.big is None else [_by_row(table.big, test, cap, n_cells)]
    for more, more_sums in late:
        counts += more
        if sums is not None and more_sums is not None:
            sums += more_sums
    return counts, sums


class _Test:
    """Which codes pass: a range test when they are one run (no gather), else a lookup."""

    def __init__(self, passes: Mask, run: tuple[int, int] | None) -> None:
        self.table = np.append(passes, False)  # the failing fixed parts' code
        self.run = run

    def into(self, c: Codes, out: Mask, scratch: Codes) -> Mask:
        if self.run is None:
            return np.take(self.table, c, out=out)
        lo, hi = self.run
        # Outside lo..hi exactly when code - lo (wrapping) exceeds hi - lo.
        np.subtract(c, np.uint16(lo), out=scratch)
        return np.less_equal(scratch, np.uint16(hi - lo), out=out)


def _by_rank(t: _Ranks, test: _Test, cap: int, n_cells: int) -> tuple[Ints, Floats | None]:
    """Rank by rank: a unit's j-th row counts when it passes and fewer than `cap` of
    its rows before it did (`seen`, a running count per unit)."""
    widest = t.widths[0]
    seen = np.zeros(widest, dtype=np.uint8)  # at most _LEVELS
    ok = np.empty(widest, dtype=np.bool_)
    under = np.empty(widest, dtype=np.bool_)
    scratch = np.empty(widest, dtype=np.uint16)
    counts = np.zeros(n_cells, dtype=np.int64)
    sums = None if t.weights is None else np.zeros(n_cells, dtype=np.float64)
    at = late_at = 0
    for j, n in enumerate(t.widths):
        passed = test.into(t.codes[at : at + n], ok[:n], scratch[:n])
        at += n
        if j >= cap:
            np.less(seen[:n], cap, out=under[:n])
            under[:n] &= passed
            keep = np.flatnonzero(under[:n])
            cells = t.cells[late_at : late_at + n][keep]
            counts += np.bincount(cells, minlength=n_cells)
            if sums is not None and t.weights is not None:
                w = t.weights[late_at : late_at + n][keep]
                sums += np.bincount(cells, weights=w, minlength=n_cells)
            late_at += n
        seen[:n] += passed
    return counts, sums


def _by_row(t: _Big, test: _Test, cap: int, n_cells: int) -> tuple[Ints, Floats | None]:
    """Row by row: counting rows of its unit before each row, from one running count."""
    n = len(t.codes)
    ok = test.into(t.codes, np.empty(n, dtype=np.bool_), np.empty(n, dtype=np.uint16))
    before = np.cumsum(ok, dtype=np.int64) - ok  # counting rows before, over all units
    before -= before[t.head]  # ... and before the row's unit starts
    keep = np.flatnonzero(ok & t.late & (before < cap))
    counts: Ints = np.bincount(t.cells[keep], minlength=n_cells).astype(np.int64, copy=False)
    sums: Floats | None = None
    if t.weights is not None:
        sums = np.bincount(t.cells[keep], weights=t.weights[keep], minlength=n_cells).astype(
            np.float64, copy=False
        )
    return counts, sums


def _kept(frame: Frame, key: Any, make: Callable[[], _Table]) -> _Table:
    kept: dict[Any, _Table] = frame.cached(("cubes",), dict)
    with _LOCK:
        got = kept.get(key)
    if got is not None:
        return got
    made = memory.released(make())
    with _LOCK:  # the oldest go first
        if key in kept:
            return kept[key]
        kept[key] = made
        while len(kept) > 1 and (
            len(kept) > _KEPT or sum(t.nbytes for t in kept.values()) > _KEPT_BYTES
        ):
            del kept[next(iter(kept))]
        return made


# -- making a table -------------------------------------------------------------------


def _gathered(w: Weights, rows: slice | npt.NDArray[np.intp]) -> Floats:
    if isinstance(w, Lut):
        return np.take(w.table, w.codes[rows]).astype(np.float64, copy=False)
    return w[rows]


def _at(
    fixed: list[Lut], varying: Lut, rows: npt.NDArray[np.intp]
) -> tuple[Codes, npt.NDArray[np.int32]]:
    """The varying codes of `rows` (the table's size where a fixed part fails) and
    their fixed parts' cells."""
    cell = codes.sum_parts([Lut(p.table, p.codes[rows]) for p in fixed], len(rows))
    code = varying.codes[rows].astype(np.uint16)
    code[cell < 0] = len(varying.table)
    return code, cell


def _make(
    frame: Frame,
    fixed: list[Lut],
    varying: Lut,
    cap: int,
    n_cells: int,
    weights: WeightsOf | None,
) -> _Table:
    size = len(varying.table)
    w_all = None if weights is None else weights[1]()
    counts = np.zeros(size * n_cells, dtype=np.int64)
    sums = None if w_all is None else np.zeros(size * n_cells, dtype=np.float64)
    # Rows per step: a step's bincount walks the whole table, so at least a quarter
    # of the table's size (small frames with wide tables take one step).
    step = max(codes.CHUNK, size * n_cells // 4)
    buf = np.empty(min(frame.n, step), dtype=np.int32)
    for a in range(0, frame.n, step):
        b = min(frame.n, a + step)
        cell = codes.sum_parts([Lut(p.table, p.codes[a:b]) for p in fixed], b - a, buf[: b - a])
        rank = np.arange(a, b) - frame.starts[frame.unit_of_row[a:b]]
        cell[rank >= cap] = OUT  # late rows are decided per query
        keep = np.flatnonzero(cell >= 0)
        at = varying.codes[a:b][keep].astype(np.int64) * n_cells + cell[keep]
        counts += np.bincount(at, minlength=size * n_cells)
        if sums is not None and w_all is not None:
            w = _gathered(w_all, slice(a, b))[keep]
            sums += np.bincount(at, weights=w, minlength=size * n_cells)
    sizes = frame.counts
    return _Table(
        _prefix(counts.reshape(size, n_cells)),
        None if sums is None else _prefix(sums.reshape(size, n_cells)),
        _ranks(frame, sizes, fixed, varying, cap, w_all),
        _big(frame, sizes, fixed, varying, cap, w_all),
    )


def _prefix(by_code: npt.NDArray[Any]) -> npt.NDArray[Any]:
    out = np.zeros((by_code.shape[0] + 1, by_code.shape[1]), dtype=by_code.dtype)
    np.cumsum(by_code, axis=0, out=out[1:])
    return out


def _ranks(
    frame: Frame,
    sizes: npt.NDArray[np.int32],
    fixed: list[Lut],
    varying: Lut,
    cap: int,
    w_all: Weights | None,
) -> _Ranks | None:
    units = np.flatnonzero((sizes > cap) & (sizes <= _LEVELS))
    if not len(units):
        return None
    units = units[np.argsort(-sizes[units], kind="stable")]  # biggest first
    by_size = sizes[units]
    widths = tuple(int(np.count_nonzero(by_size > j)) for j in range(int(by_size[0])))
    starts = frame.starts[units].astype(np.intp)
    rows = np.concatenate([starts[:w] + j for j, w in enumerate(widths)])
    code, cell = _at(fixed, varying, rows)
    early = sum(widths[:cap])  # rows of ranks below the cap, which the table counted
    return _Ranks(
        code,
        widths,
        np.ascontiguousarray(cell[early:]),
        None if w_all is None else _gathered(w_all, rows[early:]),
    )


def _big(
    frame: Frame,
    sizes: npt.NDArray[np.int32],
    fixed: list[Lut],
    varying: Lut,
    cap: int,
    w_all: Weights | None,
) -> _Big | None:
    units = np.flatnonzero(sizes > max(cap, _LEVELS))
    if not len(units):
        return None
    n = sizes[units].astype(np.intp)
    firsts = np.cumsum(n) - n  # where each unit starts among these rows
    head = np.repeat(firsts, n)
    rank = np.arange(int(n.sum())) - head
    rows = frame.starts[units].astype(np.intp)[np.repeat(np.arange(len(units)), n)] + rank
    code, cell = _at(fixed, varying, rows)
    return _Big(code, head, rank >= cap, cell, None if w_all is None else _gathered(w_all, rows))
