"""A template's exact vectors from a frame, with numpy: node/compiler.py's semantics.

`run` returns what `compiler.run` returns for the same template, values and version,
or None for a shape it does not handle (a column left out of the frame, a frame with
rank ties), and then the node asks the compiler. Every filter and dimension becomes an
int32 *part* per row, mostly one lookup table gathered over a column's small codes:
a dimension's part is its index times its stride, exactly as the compiler's CASE; a
filter's is 0 where the row passes. A row outside the domain or failing a filter gets
a large negative part, so the parts' sum is the row's cell, or negative when the row
does not count (codes.py fuses small tables into one gather and tests a filter that
passes one run of codes as a range). Then the per-unit bound on the frame's
(unit, keyed rank) order (bound.py), and np.bincount into the cells. Ages are completed years as
DuckDB's date_sub('year', ...) computes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.node.compiler import IntVector
from tessera.node.engine import bound, codes, cube
from tessera.node.engine.codes import Coded, Lut
from tessera.node.engine.frame import Column, Frame
from tessera.templates.model import (
    ActiveOnFilter,
    AgeFilter,
    BandsDim,
    BetweenFilter,
    CategoriesDim,
    DateRef,
    Dimension,
    EqualsFilter,
    Filter,
    InFilter,
    MonthsDim,
    ParamValue,
    RangeFilter,
    Statistic,
    StatisticKind,
    Template,
)

Mask = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
_EPOCH = date(1970, 1, 1)
_KINDS = (
    StatisticKind.COUNT_UNITS,
    StatisticKind.COUNT_RECORDS,
    StatisticKind.SUM,
    StatisticKind.MEAN,
)


class Unsupported(Exception):
    """The template reads something the frame does not hold: the compiler answers."""


def run(
    frame: Frame,
    template: Template,
    values: dict[str, ParamValue],
    *,
    exclude_opted_out: bool,
) -> dict[str, IntVector] | None:
    if frame.ties:
        return None
    try:
        q = _parts(frame, template, values, exclude_opted_out)
        got = _from_cube(frame, template, q)
        if got is not None:
            return got
        with codes.cells(frame) as cell:
            return _run(frame, template, q, cell)
    except Unsupported:
        return None


@dataclass(frozen=True)
class _Query:
    parts: list[Part | Lut]
    varying: list[Part | Lut]  # the parts of filters that read the values
    col: Column | None  # the summed column


def _parts(frame: Frame, t: Template, values: dict[str, ParamValue], exclude: bool) -> _Query:
    stat = t.statistic
    if t.overlap is not None or stat.kind not in _KINDS:
        raise Unsupported(stat.kind.value)
    parts: list[Part | Lut] = []
    varying: list[Part | Lut] = []
    for f in t.filters:
        got = _filter(frame, f, values)
        (varying if _reads_values(f) else parts).extend(got)
    strides = []
    acc = 1
    for n in reversed(t.shape):
        strides.append(acc)
        acc *= n
    for d, s in zip(t.group_by, reversed(strides), strict=True):
        (varying if _dim_reads_values(d) else parts).append(_part(frame, d, s, values))
    if exclude and frame.opted_out is not None:
        parts.append(codes.flag(frame.opted_out, ("flag", "opted_out")))
    col: Column | None = None
    if stat.kind in (StatisticKind.SUM, StatisticKind.MEAN):
        col = _col(frame, stat.column, "int")
        assert col.null is not None
        parts.append(codes.flag(col.null, ("flag", "null", stat.column)))
    return _Query(parts, varying, col)


def _reads_values(f: Filter) -> bool:
    if isinstance(f, InFilter):
        return f.param is not None
    if isinstance(f, BetweenFilter):
        return f.start.param is not None or f.end.param is not None
    if isinstance(f, ActiveOnFilter):
        return f.on.param is not None
    if isinstance(f, AgeFilter):
        return f.at is not None and f.at.param is not None
    return False


def _dim_reads_values(d: Dimension) -> bool:
    return isinstance(d, BandsDim) and d.at is not None and d.at.param is not None


def _from_cube(frame: Frame, t: Template, q: _Query) -> dict[str, IntVector] | None:
    """Capped counts and sums with one varying filter, from a table made once (cube.py)."""
    stat = t.statistic
    if stat.kind is StatisticKind.COUNT_UNITS or len(q.varying) != 1:
        return None
    (varying,) = q.varying
    fixed = [p for p in q.parts if isinstance(p, Lut)]
    if not isinstance(varying, Lut) or len(fixed) != len(q.parts):
        return None
    weights: cube.WeightsOf | None = None
    if q.col is not None:
        got = _weights(frame, stat, q.col)
        if got is None:
            return None
        weights = (("weights", stat.column, stat.lower, stat.upper), got)
    answer = cube.answer(frame, fixed, varying, stat.max_records_per_unit, t.n_cells, weights)
    if answer is None:
        return None
    counts, sums = answer
    if stat.kind is StatisticKind.COUNT_RECORDS:
        return {"count": counts}
    assert sums is not None
    sum_vec = np.rint(sums).astype(np.int64)
    if stat.kind is StatisticKind.SUM:
        return {"sum": sum_vec}
    return {"sum": sum_vec, "count": counts}


def _weights(frame: Frame, stat: Statistic, col: Column) -> Callable[[], Lut | Floats] | None:
    """Each row's clamped value as a float, when float sums of them are exact (below
    2^53); else None (the executor's integer path answers)."""
    if max(abs(stat.lower), abs(stat.upper)) * max(frame.n, 1) >= 1 << 53:
        return None

    def make() -> Lut | Floats:
        coded = _coded(frame, stat.column, "int")
        if coded is not None:
            clamped = np.clip(coded.values(), stat.lower, stat.upper).astype(np.float64)
            return coded.lut(clamped, 0.0)
        clipped: Floats = np.clip(col.values.astype(np.int64), stat.lower, stat.upper).astype(
            np.float64
        )
        return clipped

    return make


def _run(frame: Frame, t: Template, q: _Query, cell: Part) -> dict[str, IntVector]:
    """The vectors, with `cell` (one int32 per row) as scratch: nothing returned views it."""
    stat = t.statistic
    n_cells = t.n_cells
    col = q.col
    codes.sum_parts(codes.fuse(frame, [*q.parts, *q.varying]), frame.n, cell)
    if stat.kind is StatisticKind.COUNT_UNITS:
        by_date = None
        if stat.choose is not None:
            by = _col(frame, stat.by, "date")
            assert by.null is not None
            by_date = (by.values, by.null)
        chosen = bound.count_units(
            frame, stat.max_cells_per_unit, stat.choose, by_date, cell >= 0, cell, n_cells
        )
        return {"count": np.bincount(cell[chosen], minlength=n_cells).astype(np.int64)}
    bound.first_per_unit(frame, cell, stat.max_records_per_unit)
    # Bin 0 takes every row that does not count; cell c goes to bin c + 1.
    binned = cell
    bins = np.zeros(n_cells + 1, dtype=np.int64)
    for a in range(0, frame.n, codes.CHUNK):
        chunk = binned[a : a + codes.CHUNK]
        np.maximum(chunk, -1, out=chunk)
        chunk += 1
        bins += np.bincount(chunk, minlength=n_cells + 1)
    counts = bins[1:]
    if stat.kind is StatisticKind.COUNT_RECORDS:
        return {"count": counts}
    assert col is not None
    # least(greatest(CAST(v AS BIGINT), lower), upper): the column is an integer already.
    make = _weights(frame, stat, col)
    if make is not None:
        # Float sums are exact below 2^53; rows that do not count land in bin 0.
        w = make()
        weights = w.gather() if isinstance(w, Lut) else w
        sums = np.bincount(binned, weights=weights, minlength=n_cells + 1)
        sum_vec = np.rint(sums[1:]).astype(np.int64)
    else:
        total = np.zeros(n_cells + 1, dtype=np.int64)
        np.add.at(total, binned, np.clip(col.values.astype(np.int64), stat.lower, stat.upper))
        sum_vec = total[1:]
    if stat.kind is StatisticKind.SUM:
        return {"sum": sum_vec}
    return {"sum": sum_vec, "count": counts}


# A row's part when it fails a filter or lies outside a dimension's domain: the sum of
# a row's parts is negative exactly when one of them is (valid parts sum below 2^14).
_OUT = bound.OUT
Part = npt.NDArray[np.int32]


def _fails(mask: Mask) -> Part:
    """_OUT where `mask`, else 0."""
    return mask.astype(np.int32) * _OUT


def _col(frame: Frame, name: str | None, kind: str) -> Column:
    col = frame.columns.get(name) if name is not None else None
    if col is None or col.kind != kind:
        raise Unsupported(name)
    return col


def _day(ref: DateRef, values: dict[str, ParamValue]) -> date:
    v = values[ref.param] if ref.param is not None else ref.fixed
    assert isinstance(v, date)
    return v


def _days(d: date) -> int:
    return (d - _EPOCH).days


def _coded(frame: Frame, name: str | None, kind: str, what: str = "") -> Coded | None:
    col = _col(frame, name, kind)
    assert name is not None
    return codes.coded(frame, col, name, what)


# --- filters ------------------------------------------------------------------------


def _filter(frame: Frame, f: Filter, values: dict[str, ParamValue]) -> list[Part | Lut]:
    if isinstance(f, InFilter):
        col = _col(frame, f.column, "code")
        allowed = (values[f.param],) if f.param is not None else f.values
        table = np.array([w in allowed for w in col.dictionary], dtype=np.bool_)
        return [_known(frame, f.column, "code").passes(table, False)]
    if isinstance(f, EqualsFilter):
        table = np.array([not f.value, f.value], dtype=np.bool_)
        return [_known(frame, f.column, "bool").passes(table, False)]
    if isinstance(f, RangeFilter):
        return [_test(frame, f.column, "int", lambda v: (v >= f.min) & (v <= f.max), False)]
    if isinstance(f, BetweenFilter):
        lo, hi = _days(_day(f.start, values)), _days(_day(f.end, values))
        return [_test(frame, f.column, "date", lambda v: (v >= lo) & (v <= hi), False)]
    if isinstance(f, ActiveOnFilter):
        on = _days(_day(f.on, values))
        # start <= on AND (end IS NULL OR end > on)
        return [
            _test(frame, f.start_column, "date", lambda v: v <= on, False),
            _test(frame, f.end_column, "date", lambda v: v > on, True),
        ]
    assert isinstance(f, AgeFilter)
    age, missing = _age(frame, f.birth_column, f.at, f.at_column, values)
    return [_fails(missing | (age < f.min) | (age > f.max))]


def _known(frame: Frame, name: str, kind: str) -> Coded:
    coded = _coded(frame, name, kind)
    assert coded is not None  # dictionary and boolean columns are always coded
    return coded


def _test(frame: Frame, name: str, kind: str, test: Any, null: bool) -> Part | Lut:
    """A filter's part from test(values) on an int or date column; `null` for NULL."""
    coded = _coded(frame, name, kind)
    if coded is not None:
        return coded.passes(test(coded.values()), null)
    col = _col(frame, name, kind)
    assert col.null is not None
    ok: Mask = test(col.values)
    return _fails(~(ok | col.null) if null else ~ok | col.null)


def _age(
    frame: Frame,
    birth_column: str,
    at: DateRef | None,
    at_column: str | None,
    values: dict[str, ParamValue],
) -> tuple[Ints, Mask]:
    """Completed years from birth to the date, as DuckDB's date_sub('year', b, a):
    whole months from the earlier date to the later (a day-of-month short of the start
    day is a month short, unless the later date is its month's last day), over 12,
    negated when the birth date is the later one. Returns (age, NULL mask)."""
    birth = _col(frame, birth_column, "date")
    b = frame.date_parts(birth_column)
    assert birth.null is not None
    if at_column is not None:
        a_col = _col(frame, at_column, "date")
        assert a_col.null is not None
        a = frame.date_parts(at_column)
        a_days: Any = a_col.values
        ay: Any = a.year
        am: Any = a.month
        ad: Any = a.day
        a_end: Any = a.month_end
        missing = birth.null | a_col.null
    else:
        assert at is not None
        d = _day(at, values)
        a_days, ay, am, ad = _days(d), d.year, d.month, d.day
        a_end = (date.fromordinal(d.toordinal() + 1)).day == 1
        missing = birth.null
    swap = birth.values > a_days  # born after the date: count backwards
    sy, sm, sd = np.where(swap, ay, b.year), np.where(swap, am, b.month), np.where(swap, ad, b.day)
    ey, em, ed = np.where(swap, b.year, ay), np.where(swap, b.month, am), np.where(swap, b.day, ad)
    e_end = np.where(swap, b.month_end, a_end)
    months = (ey - sy).astype(np.int64) * 12 + (em - sm) - ((ed < sd) & ~e_end)
    years = months // 12
    return np.where(swap, -years, years), missing


# --- dimensions --------------------------------------------------------------------------


def _part(frame: Frame, d: Dimension, stride: int, values: dict[str, ParamValue]) -> Part | Lut:
    """This dimension's index times its stride, per row (_OUT outside the domain)."""
    if isinstance(d, CategoriesDim):
        col = _col(frame, d.column, "code")
        other = len(d.categories) if d.other is not None else -1
        index = np.full(len(col.dictionary), other, dtype=np.int64)
        for i, word in enumerate(col.dictionary):
            for j, c in enumerate(d.categories):
                if word in c.codes:
                    index[i] = j
        # NULL: `unknown` when declared, else on to `other` (the CASE's ELSE) or nowhere.
        null = len(d.labels) - 1 if d.unknown is not None else other
        return _known(frame, d.column, "code").parts(index, null, stride)
    if isinstance(d, BandsDim):
        unknown = len(d.bands) if d.unknown is not None else -1
        if d.column is not None:
            coded = _coded(frame, d.column, "int")
            if coded is not None:
                return coded.parts(_band(coded.values(), d), unknown, stride)
            col = _col(frame, d.column, "int")
            assert col.null is not None
            v, missing = col.values.astype(np.int64), col.null
        else:
            assert d.birth_column is not None
            v, missing = _age(frame, d.birth_column, d.at, d.at_column, values)
        index = _band(v, d).astype(np.int64)
        index[missing] = unknown
        return np.where(index >= 0, index * stride, _OUT).astype(np.int32)
    assert isinstance(d, MonthsDim)
    first = d.first[0] * 12 + d.first[1] - 1
    coded = _coded(frame, d.column, "date", "month")
    if coded is not None:
        k = coded.values() - first
        return coded.parts(np.where((k >= 0) & (k < len(d.labels)), k, -1), -1, stride)
    col = _col(frame, d.column, "date")
    assert col.null is not None
    p = frame.date_parts(d.column)
    k = p.year.astype(np.int64) * 12 + p.month - 1 - first
    ok = (k >= 0) & (k < len(d.labels)) & ~col.null
    return np.where(ok, k * stride, _OUT).astype(np.int32)


def _band(v: Ints, d: BandsDim) -> npt.NDArray[np.int16]:
    """The declared index of the band holding each value, -1 for none (bands do not overlap)."""
    order = sorted(range(len(d.bands)), key=lambda i: d.bands[i].min)
    mins = np.array([d.bands[i].min for i in order], dtype=np.int64)
    maxs = np.array([d.bands[i].max for i in order], dtype=np.int64)
    which = np.array(order, dtype=np.int16)
    p = np.searchsorted(mins, v, side="right") - 1
    pc = np.clip(p, 0, None)
    ok = (p >= 0) & (v <= maxs[pc])
    return np.where(ok, which[pc], -1).astype(np.int16)
