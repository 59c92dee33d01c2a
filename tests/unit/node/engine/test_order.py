"""The frame's row order (node/engine/order.py): right, and built within a memory bound."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.node.engine import memory
from tessera.node.engine import order as ordering


def keys(n: int, units: int, seed: int) -> list[npt.NDArray[Any]]:
    rng = np.random.default_rng(seed)
    unit = rng.integers(0, units, n, dtype=np.uint64)
    hu = unit * np.uint64(0x9E3779B97F4A7C15)  # distinct per unit
    h2 = (unit * np.uint64(0xC2B2AE3D27D4EB4F) >> np.uint64(32)).astype(np.uint32)
    r = rng.integers(0, 1 << 63, n, dtype=np.uint64) * np.uint64(2)
    return [hu, h2, r]


def reference(hu: npt.NDArray[Any], r: npt.NDArray[Any]) -> tuple[Any, Any]:
    order = np.lexsort((r, hu))
    hs = hu[order]
    new_unit = np.r_[True, hs[1:] != hs[:-1]] if len(hu) else np.zeros(0, np.bool_)
    return new_unit, r[order]


def test_rows_are_ordered_by_unit_then_rank() -> None:
    for n, units in ((100_000, 30_000), (5000, 3), (1, 1), (0, 1)):
        hu, h2, r = keys(n, units, n)
        if units == 3 and n:
            r[1::2] = r[0]  # one unit's ranks agree in their top bits: the exact fallback
        want_new, want_r = reference(hu, r)
        got = ordering.sort_keys([hu.copy(), h2, r.copy()])
        assert got is not None
        order, new_unit, r_sorted = got
        assert order.dtype == np.int32
        assert np.array_equal(new_unit, want_new)
        assert np.array_equal(r_sorted, want_r)
        assert np.array_equal(r[order], want_r)
        assert np.array_equal(hu[order], np.sort(hu))


def test_two_units_with_one_hash_are_not_framed() -> None:
    hu, h2, r = keys(1000, 100, 7)
    h2[np.flatnonzero(hu == hu[0])[-1]] ^= 1  # same hash(unit), different second hash
    assert ordering.sort_keys([hu, h2, r]) is None


def test_the_sort_holds_at_most_its_keys_and_one_int64_order() -> None:
    # The build's peak at 10^7 rows is this sort (bench: VmHWM): its keys (8 + 4 + 8
    # bytes a row, the opt-out flag aside) and one int64 argsort result, no more.
    n = 1 << 20
    tracemalloc.start()
    try:
        ranked = keys(n, n // 3, 1)
        tracemalloc.reset_peak()
        got = ordering.sort_keys(ranked)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got is not None
    assert peak <= 31 * n  # 29.6 measured; was 33: int64 and int32 orders at once


def test_releasing_memory_is_safe_to_call() -> None:
    memory.release()  # a no-op where there is no glibc malloc_trim
