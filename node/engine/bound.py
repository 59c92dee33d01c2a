"""The per-unit bound on a frame's (unit, keyed rank) order, as node/compiler.py's windows.

Within a unit the frame's rows are in the compiler's keyed order (frame.py), so "the
first `cap` records" is a running count of counting rows per unit segment, and "the
first record" or "the cells whose first record comes earliest" are first occurrences.
A row that does not count has a negative cell.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

from tessera.node.engine import memory
from tessera.node.engine.frame import Frame
from tessera.templates.model import Choice

Ints = npt.NDArray[np.int64]
Rows = npt.NDArray[np.int32]
Cells = npt.NDArray[np.int32]
Mask = npt.NDArray[np.bool_]
# A cell that does not count (the executor's parts use the same value).
OUT = np.int32(-(1 << 20))


def first_per_unit(frame: Frame, cell: Cells, cap: int) -> None:
    """Keep each unit's first `cap` counting rows in keyed order: the others' cells are
    set negative. Units with at most `cap` records keep every row, so only the rows of
    the others are looked at, in chunks of whole units (a chunk's arrays stay in cache),
    and of those only the rows `cap` or more into their unit can be over the cap."""
    big = frame.cached(("big", cap), lambda: memory.released(_big_rows(frame, cap)))
    if big is None:
        return
    rows, late, first, chunks = big
    # cs[i]: counting rows among the chunk's first i rows.
    cs = np.zeros(max(rb - ra for ra, rb, _, _ in chunks) + 1, dtype=np.int32)
    for ra, rb, la, lb in chunks:
        where = rows[ra:rb]
        sub = np.take(cell, where) >= 0
        np.cumsum(sub, dtype=np.int32, out=cs[1 : rb - ra + 1])
        lt = late[la:lb]
        # Counting rows of its unit before a late row: cs[row] - cs[unit's first row].
        over = sub[lt] & (np.take(cs, lt) - np.take(cs, first[la:lb]) >= cap)
        cell[where[lt[over]]] = OUT


# Rows of big units per chunk of first_per_unit (whole units: a chunk may run over).
_CHUNK_ROWS = 1 << 16


def _big_rows(
    frame: Frame, cap: int
) -> tuple[Rows, Rows, Rows, list[tuple[int, int, int, int]]] | None:
    """The rows of units with more than `cap` records; those `cap` or more into their
    unit ("late") and where each one's unit starts, both as indices within their chunk;
    and chunks of whole units as (first row, end row, first late row, end late row)."""
    counts = frame.counts
    big_units = np.flatnonzero(counts > cap)
    if not len(big_units):
        return None
    sizes = counts[big_units]
    del counts
    # int32 throughout (a frame's rows are int32-indexed), and the late rows made from
    # the units' sizes, not found among all their rows: this was a query's largest
    # allocation at 10^7 rows.
    ends = np.cumsum(sizes, dtype=np.int64)
    total = int(ends[-1])
    starts = (ends - sizes).astype(np.int32)
    del ends
    rows = np.arange(total, dtype=np.int32)
    rows += np.repeat(frame.starts[big_units] - starts, sizes)
    extra = sizes - np.int32(cap)  # each big unit's late rows
    first = np.repeat(starts, extra)
    late_ends = np.cumsum(extra, dtype=np.int64)
    late = np.arange(int(late_ends[-1]), dtype=np.int32)
    late -= np.repeat((late_ends - extra).astype(np.int32), extra)  # rank among them
    del late_ends
    late += first
    late += np.int32(cap)
    cuts = np.searchsorted(starts, np.arange(0, total, _CHUNK_ROWS), side="left")
    unit_cuts = sorted({*cuts.tolist(), len(big_units)})
    if unit_cuts[0] != 0:
        unit_cuts.insert(0, 0)
    chunks = []
    for sa, sb in itertools.pairwise(unit_cuts):
        ra = int(starts[sa])
        rb = int(starts[sb]) if sb < len(starts) else total
        la, lb = (int(i) for i in np.searchsorted(late, [ra, rb]))
        chunks.append((ra, rb, la, lb))
    for ra, _, la, lb in chunks:  # late is searched above: made chunk-local only now
        late[la:lb] -= ra
        first[la:lb] -= ra
    return rows, late, first, chunks


def count_units(
    frame: Frame,
    max_cells: int,
    choose: Choice | None,
    by_date: tuple[npt.NDArray[np.int32], Mask] | None,
    mask: Mask,
    cell: npt.NDArray[np.int32],
    n_cells: int,
) -> Ints:
    """count_units: the rows whose cells a unit is counted in (one row per cell).
    `by_date` is the `choose` column's (days, NULL mask)."""
    idx = np.flatnonzero(mask)
    units = frame.unit_of_row[idx]
    if choose is None or by_date is None:
        key: Ints | None = None
    else:
        days, null = by_date
        sign = -1 if choose is Choice.LATEST else 1
        # Dated records first, latest (or earliest) first; undated ones last; then keyed.
        key = np.where(null[idx], np.int64(1 << 40), sign * days[idx].astype(np.int64))
    if max_cells == 1:
        if key is None:
            return idx[_segment_starts(units)]
        change = _changes(units)
        seg = np.flatnonzero(change)
        lowest = np.minimum.reduceat(key, seg) if len(seg) else key[:0]
        seg_of = np.cumsum(change) - 1
        at_min = np.flatnonzero(key == lowest[seg_of])
        return idx[at_min[_segment_starts(units[at_min])]]
    if key is not None:
        order = np.lexsort((idx, key, units))
        idx, units = idx[order], units[order]
    pair = units.astype(np.int64) * n_cells + cell[idx]
    _, first = np.unique(pair, return_index=True)
    first.sort()
    f_units = units[first]
    starts = _segment_starts(f_units)
    seg = np.repeat(starts, np.diff(np.append(starts, len(first))))
    rank = np.arange(len(first)) - seg
    out: Ints = idx[first[rank < max_cells]]
    return out


def _changes(units: npt.NDArray[np.int32]) -> Mask:
    """True where a run of equal unit codes begins."""
    change = np.empty(len(units), dtype=np.bool_)
    if len(units):
        change[0] = True
        np.not_equal(units[1:], units[:-1], out=change[1:])
    return change


def _segment_starts(units: npt.NDArray[np.int32]) -> Ints:
    return np.flatnonzero(_changes(units))
