"""The engine's fast paths against their plain definitions: fused lookups, range tests
and the per-unit cap (the differential tests check them against the compiler)."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.node.engine import bound, codes
from tessera.node.engine.codes import OUT, Lut
from tessera.node.engine.frame import Column, Frame


def _frame(units: list[int], n_codes: int = 7) -> Frame:
    """Rows of units of the given sizes, with three small code columns."""
    n = sum(units)
    rng = np.random.default_rng(len(units))
    counts = np.array(units, dtype=np.int32)
    starts = (np.cumsum(counts) - counts).astype(np.int32)
    cols = {
        f"c{i}": Column("code", rng.integers(-1, n_codes, n).astype(np.int16), None, ("x",) * 7)
        for i in range(3)
    }
    unit_of_row = np.repeat(np.arange(len(units)), units).astype(np.int32)
    oo = rng.random(n) < 0.2
    return Frame(n, unit_of_row, starts, oo, cols, 0)


def _plain(parts: list[codes.Part | Lut], n: int) -> codes.Part:
    total = np.zeros(n, dtype=np.int64)
    for p in parts:
        total += p.gather() if isinstance(p, Lut) else p
    return np.where(total < 0, -1, total).astype(np.int32)


def _luts(frame: Frame) -> list[codes.Part | Lut]:
    rng = np.random.default_rng(1)
    out: list[codes.Part | Lut] = []
    for i, name in enumerate(frame.columns):
        c = codes.coded(frame, frame.columns[name], name)
        assert c is not None
        index = rng.integers(-1, 3, c.size)
        out.append(c.parts(index, int(rng.integers(-1, 3)), 3**i))
    assert frame.opted_out is not None
    out.append(codes.flag(frame.opted_out, ("flag", "opted_out")))
    return out


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of a few rows, so the tests cross chunk boundaries."""
    monkeypatch.setattr(codes, "CHUNK", 16)
    monkeypatch.setattr(bound, "_CHUNK_ROWS", 16)


def test_fused_parts_give_the_same_cells() -> None:
    frame = _frame([1, 2, 5, 3, 8, 1] * 50)
    parts = _luts(frame)
    fused = codes.fuse(frame, parts)
    assert len(fused) < len(parts)
    got = codes.sum_parts(fused, frame.n)
    assert np.array_equal(np.where(got < 0, -1, got), _plain(parts, frame.n))


def test_fused_codes_kept_are_bounded() -> None:
    frame = _frame([2, 3] * 20)
    parts = _luts(frame)
    for drop in range(len(parts)):  # each subset a different fused set
        codes.fuse(frame, parts[:drop] + parts[drop + 1 :])
    kept = frame.cached(("fused",), dict)
    assert 0 < len(kept) <= codes._FUSED_KEPT


def test_range_parts_are_tested_not_gathered() -> None:
    frame = _frame([3, 4, 1] * 40, n_codes=7)
    c = codes.coded(frame, frame.columns["c0"], "c0")
    assert c is not None
    for lo, hi, null in [(0, 6, True), (2, 4, False), (0, 0, False), (6, 6, True), (3, 2, False)]:
        table = (np.arange(c.size) >= lo) & (np.arange(c.size) <= hi)
        part = c.passes(table, null)
        got = codes.sum_parts([part], frame.n)
        assert np.array_equal(got < 0, part.gather() < 0)
        assert not got[got >= 0].any()
    # Not one run: a gather, exactly.
    part = c.passes(np.arange(c.size) % 2 == 0, False)
    assert codes._range(part) is None


def test_cap_keeps_each_units_first_counting_rows() -> None:
    sizes = [1, 2, 3, 4, 5, 9, 4, 1, 7] * 30
    frame = _frame(sizes)
    rng = np.random.default_rng(3)
    for cap in (1, 2, 3):
        cell = np.where(rng.random(frame.n) < 0.3, OUT, rng.integers(0, 5, frame.n)).astype(
            np.int32
        )
        want = cell.copy()
        for s, k in zip(frame.starts.tolist(), frame.counts.tolist(), strict=True):
            seen = 0
            for r in range(s, s + k):
                if want[r] >= 0:
                    seen += 1
                    if seen > cap:
                        want[r] = OUT
        bound.first_per_unit(frame, cell, cap)
        assert np.array_equal(cell < 0, want < 0)
        assert np.array_equal(cell[cell >= 0], want[want >= 0])


def test_a_reused_cell_buffer_gives_the_same_cells() -> None:
    frame = _frame([2, 5, 1, 3] * 30)
    parts = _luts(frame)
    c = codes.coded(frame, frame.columns["c1"], "c1")
    assert c is not None
    only_range = [c.passes((np.arange(c.size) >= 2) & (np.arange(c.size) <= 4), False)]
    for ps in (parts, only_range, []):
        fresh = codes.sum_parts(ps, frame.n)
        with codes.cells(frame) as cell:
            cell[...] = 12345  # a previous query's leftovers
            got = codes.sum_parts(ps, frame.n, cell)
        assert np.array_equal(got < 0, fresh < 0)
        assert np.array_equal(got[got >= 0], fresh[fresh >= 0])
    with codes.cells(frame) as a, codes.cells(frame) as b:  # concurrent queries: two buffers
        assert a is not b
    assert len(frame.cached(("cells",), list)) == codes._CELLS_KEPT
