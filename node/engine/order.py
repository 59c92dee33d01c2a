"""The frame's row order and its rank ties, on plain numpy arrays (node/engine/frame.py).

`sort_keys` orders a scan's rows by (unit, keyed rank); `count_ties` finds a unit's
records whose order the frame cannot take from the rank alone (see frame.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # frame.py imports this module
    from tessera.node.engine.frame import Column

Array = npt.NDArray[Any]
# The compiler orders a unit's records by (rank >> 14, cell).
_CELL_BITS: Final = 14


def sort_keys(
    keys: list[Array],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.bool_], npt.NDArray[np.uint64]] | None:
    """From [hash(unit), second hash(unit), rank] (emptied): the row order by (unit,
    rank), where each unit's records start, and the ranks in that order; None when two
    units' hashes collide. Two argsorts of one 64-bit key each (a lexsort of two keys
    measured about twice as slow at 10^7 rows); arrays are dropped as soon as they are
    used, to keep the peak low."""
    hu = keys.pop(0)
    n = len(hu)
    by_unit64 = np.argsort(hu)
    hu.sort()  # in place: hu[by_unit] without a second 64-bit array
    new_unit = np.empty(n, dtype=np.bool_)
    if n:
        new_unit[0] = True
        np.not_equal(hu[1:], hu[:-1], out=new_unit[1:])
    del hu  # before the int32 copy of the order: the two int64 arrays are the peak
    by_unit = by_unit64.astype(np.int32)
    del by_unit64
    h2s = keys.pop(0)[by_unit]
    if n and np.any(~new_unit[1:] & (h2s[1:] != h2s[:-1])):
        return None  # two units share hash(unit): leave this source to the compiler
    del h2s
    unit = np.cumsum(new_unit, dtype=np.int32) - 1
    ub = max(1, int(unit[-1]).bit_length()) if n else 1
    rs = keys.pop(0)[by_unit]
    # The unit in the high bits, the rank's top bits below: one key, one sort.
    key = unit.astype(np.uint64)
    del unit  # the argsort below is the peak: hold no more than it needs
    key <<= np.uint64(64 - ub)
    key |= rs >> np.uint64(ub)
    within64 = np.argsort(key)
    del key  # before the int32 copy, as above
    within = within64.astype(np.int32)
    del within64
    r_sorted = rs[within]
    if n and np.any(~new_unit[1:] & (r_sorted[1:] < r_sorted[:-1])):
        # Two ranks of one unit agree in their top bits: sort on the full rank.
        unit = np.cumsum(new_unit, dtype=np.int32) - 1
        within = np.lexsort((rs, unit)).astype(np.int32)
        r_sorted = rs[within]
        del unit
    del rs
    return by_unit[within], new_unit, r_sorted


def count_ties(
    r: npt.NDArray[np.uint64], new_unit: npt.NDArray[np.bool_], columns: list[Column]
) -> int:
    """Pairs of one unit's records, adjacent in rank order, with equal (rank >> 14) but
    different content: the compiler orders those by cell, the frame cannot."""
    return count_differing(tie_pairs(r, new_unit), columns)


def tie_pairs(r: npt.NDArray[np.uint64], new_unit: npt.NDArray[np.bool_]) -> Array:
    """The rows i (in rank order) where rows i and i + 1 are one unit's with equal
    (rank >> 14): `count_differing` counts those with different content."""
    # In chunks: whole-column shifted copies of the ranks would be the build's peak.
    step = 1 << 20
    found = []
    for a in range(0, max(len(r) - 1, 0), step):
        b = min(a + step, len(r) - 1)
        hi = r[a + 1 : b + 1] >> _CELL_BITS
        same = ~new_unit[a + 1 : b + 1] & (hi == (r[a:b] >> _CELL_BITS))
        found.append(np.flatnonzero(same) + a)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def count_differing(pairs: Array, columns: list[Column]) -> int:
    if not len(pairs):
        return 0
    differ = np.zeros(len(pairs), dtype=np.bool_)
    for col in columns:
        differ |= col.values[pairs] != col.values[pairs + 1]
        if col.null is not None:
            differ |= col.null[pairs] != col.null[pairs + 1]
    return int(differ.sum())
