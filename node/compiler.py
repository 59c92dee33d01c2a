"""Compile a template and bound parameters into one parameterised DuckDB query.

The SQL text comes only from the template's structure, checked against the
schema: identifiers are the schema's own column names, and every value (codes,
bounds, dates, caps, the order key) is a bound parameter. Nothing from a request
becomes SQL.

Each unit's contribution is bounded inside the query, before aggregation, by
choosing which of its records count. The choice follows the node's *keyed order*:
each record of the source gets a rank

    rank = hash(hash(hash(row) XOR k1) XOR k2)

where `hash(row)` is DuckDB's 64-bit hash of the whole source row and (k1, k2) are
derived from the node secret (`order_words`). The rank is stable for a given key,
data and DuckDB version (same question, same answer) and does not depend on the
records' values or the order of rows in storage; it takes the key to compute (a
keyed mix of DuckDB's integer hash: cheap, though not a cryptographic PRF). Records
are taken in ascending `key = (rank with its low 14 bits replaced by the cell
index)`, then clamped value: ties are resolved by content, so the result never
depends on scan order. Records identical in every column share a rank: they are
interchangeable, and come one after the other in the order.

Measured on 10^6 `health` rows (bench/data.py, 432,326 people; DuckDB 2.0, 2
threads, best of 7, opt-out applied), lowest-first with per-record opt-out before,
keyed order with per-person opt-out now: count_records, 25 cells, cap 3: 207 ms ->
200 ms; mean, cap 3: 154 -> 210 ms; count_units, one cell: 106 -> 166 ms; two
cells: 322 -> 286 ms. What keeps it close: the window partitions by (hash(u), u),
sorting on an integer first (about half the time of the text key alone); the
source is scanned a second time for the opt-out set rather than materialised.

- count_units: a unit is counted in at most `max_cells_per_unit` distinct cells:
  the cells of its records in keyed order (with a cap of m, the m cells whose
  first record comes earliest), or, with `choose = "latest"` / `"earliest"`, in
  order of the `by` date (latest or earliest first; records without a date come
  last; equal dates in keyed order);
- count_records, sum, mean: at most `max_records_per_unit` records per unit, the
  first in keyed order, each value clamped to [lower, upper].
For purposes other than direct care, a unit with any opted-out record (or any record
whose opt-out status is unknown) anywhere in the source is left out entirely.
The result is one exact integer per cell of the declared domain, empty cells included.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera import schemas
from tessera.templates.model import (
    ActiveOnFilter,
    AgeFilter,
    BandsDim,
    BetweenFilter,
    CategoriesDim,
    Choice,
    DateRef,
    Dimension,
    EqualsFilter,
    Filter,
    InFilter,
    MonthsDim,
    ParamValue,
    RangeFilter,
    StatisticKind,
    Template,
)
from tessera.templates.parse import MAX_CELLS

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

ORDER_KEY_BYTES = 32
_ORDER_DOMAIN = b"tessera/v1/record-order\x00"
# The low bits of a record's rank give way to its cell index (so equal keys mean the
# same cell): enough for every cell of the largest domain a template may declare.
_CELL_BITS = 14
assert MAX_CELLS < 1 << _CELL_BITS

IntVector = npt.NDArray[np.int64]


@dataclass(frozen=True)
class CompiledQuery:
    sql: str
    params: tuple[Any, ...]
    measures: tuple[str, ...]
    n_cells: int


def order_words(order_key: bytes) -> tuple[int, int]:
    """The two 64-bit words of the keyed record order, derived from the node secret
    (HMAC-SHA256 under a domain of their own, so the secret's other uses are unaffected)."""
    if not isinstance(order_key, bytes) or len(order_key) != ORDER_KEY_BYTES:
        raise ValueError(f"order_key must be {ORDER_KEY_BYTES} bytes")
    d = hmac.new(order_key, _ORDER_DOMAIN, hashlib.sha256).digest()
    return int.from_bytes(d[:8], "big"), int.from_bytes(d[8:16], "big")


def _q(name: str) -> str:
    # Identifiers come from the schema module, never from input; check anyway.
    if not _IDENT.match(name):
        raise ValueError("invalid identifier in schema")
    return f'"{name}"'


class _Builder:
    def __init__(self, values: dict[str, ParamValue]) -> None:
        self.values = values
        self.params: list[Any] = []

    def bind(self, v: Any) -> str:
        self.params.append(v)
        return "?"

    def date_ref(self, ref: DateRef) -> str:
        if ref.param is not None:
            v = self.values[ref.param]
            assert isinstance(v, date)
            return self.bind(v)
        assert ref.fixed is not None
        return self.bind(ref.fixed)

    def at(self, ref: DateRef | None, at_column: str | None) -> str:
        if at_column is not None:
            return _q(at_column)
        assert ref is not None
        return self.date_ref(ref)

    def in_list(self, codes: tuple[str, ...]) -> str:
        return "(" + ", ".join(self.bind(c) for c in codes) + ")"

    def filter(self, f: Filter) -> str:
        if isinstance(f, InFilter):
            if f.param is not None:
                return f"{_q(f.column)} = {self.bind(self.values[f.param])}"
            return f"{_q(f.column)} IN {self.in_list(f.values)}"
        if isinstance(f, EqualsFilter):
            return f"{_q(f.column)} = {self.bind(f.value)}"
        if isinstance(f, RangeFilter):
            return f"{_q(f.column)} BETWEEN {self.bind(f.min)} AND {self.bind(f.max)}"
        if isinstance(f, BetweenFilter):
            lo, hi = self.date_ref(f.start), self.date_ref(f.end)
            return f"{_q(f.column)} BETWEEN {lo} AND {hi}"
        if isinstance(f, ActiveOnFilter):
            on1 = self.date_ref(f.on)
            on2 = self.date_ref(f.on)
            return (
                f"{_q(f.start_column)} <= {on1} AND "
                f"({_q(f.end_column)} IS NULL OR {_q(f.end_column)} > {on2})"
            )
        assert isinstance(f, AgeFilter)
        age = f"date_sub('year', {_q(f.birth_column)}, {self.at(f.at, f.at_column)})"
        return f"{age} BETWEEN {self.bind(f.min)} AND {self.bind(f.max)}"

    def band_value(self, d: BandsDim) -> str:
        """The banded value; built afresh for each use so its parameters bind in order."""
        if d.column is not None:
            return _q(d.column)
        assert d.birth_column is not None
        return f"date_sub('year', {_q(d.birth_column)}, {self.at(d.at, d.at_column)})"

    def dimension(self, d: Dimension) -> str:
        """An expression giving the cell index along this dimension, or NULL (dropped)."""
        if isinstance(d, CategoriesDim):
            # A missing code goes to `unknown` when declared (the last index), else on
            # to `other` (ELSE) or nowhere.
            missing = (
                f"WHEN {_q(d.column)} IS NULL THEN {len(d.labels) - 1} "
                if d.unknown is not None
                else ""
            )
            whens = " ".join(
                f"WHEN {_q(d.column)} IN {self.in_list(c.codes)} THEN {i}"
                for i, c in enumerate(d.categories)
            )
            other = str(len(d.categories)) if d.other is not None else "NULL"
            return f"CASE {missing}{whens} ELSE {other} END"
        if isinstance(d, BandsDim):
            missing = (
                f"WHEN ({self.band_value(d)}) IS NULL THEN {len(d.bands)} "
                if d.unknown is not None
                else ""
            )
            whens = " ".join(
                f"WHEN {self.band_value(d)} BETWEEN {self.bind(b.min)} AND {self.bind(b.max)} "
                f"THEN {i}"
                for i, b in enumerate(d.bands)
            )
            return f"CASE {missing}{whens} ELSE NULL END"
        assert isinstance(d, MonthsDim)
        (y0, m0), (y1, m1) = d.first, d.last
        after = date(y1 + 1, 1, 1) if m1 == 12 else date(y1, m1 + 1, 1)
        col = _q(d.column)
        lo, hi = self.bind(date(y0, m0, 1)), self.bind(after)
        return (
            f"CASE WHEN {col} >= {lo} AND {col} < {hi} THEN "
            f"(year({col}) - {self.bind(y0)}) * 12 + month({col}) - {self.bind(m0)} END"
        )


def rank_expr(b: _Builder, order_key: bytes) -> str:
    """Each source row's keyed rank (the module docstring); binds the two key words."""
    k1, k2 = order_words(order_key)
    return f"hash(xor(hash(xor(hash(src), {b.bind(k1)}::UBIGINT)), {b.bind(k2)}::UBIGINT))"


def cell_expr(b: _Builder, template: Template) -> str:
    """Row-major flat cell index; NULL when any dimension is outside the domain."""
    strides = []
    acc = 1
    for n in reversed(template.shape):
        strides.append(acc)
        acc *= n
    strides.reverse()
    parts = [f"({b.dimension(d)}) * {s}" for d, s in zip(template.group_by, strides, strict=True)]
    return " + ".join(parts) if parts else "0"


def opt_out_clause(ds: schemas.Dataset, source: schemas.Source) -> str:
    """Per person: one opted-out record, or one whose status is unknown, leaves the
    unit out entirely, whatever the template's filters. (The source is written out
    again rather than named: a second reference to `src` would make DuckDB
    materialise it, every column of every row.)"""
    assert ds.opt_out_column is not None
    unit = _q(source.unit)
    return (
        f"{unit} NOT IN (SELECT {unit} FROM ({source.sql}) WHERE {unit} IS NOT NULL "
        f"AND coalesce({_q(ds.opt_out_column)}, TRUE))"
    )


def unit_order(choose: Choice | None) -> str:
    """The order in which a unit's records decide its cells (lower first), over the
    columns `k` (keyed order with the cell in its low bits) and `b` (the `by` date)."""
    if choose is None:
        return "k"
    # Dated records first (latest or earliest first), then undated ones; the day is
    # never NULL, so ties always fall through to `k`.
    sign = "-" if choose is Choice.LATEST else ""
    day = f"coalesce({sign}(b - DATE '1970-01-01'), 0)"
    return f"{{'missing': b IS NULL, 'day': {day}, 'k': k}}"


def compile_query(
    template: Template,
    values: dict[str, ParamValue],
    *,
    exclude_opted_out: bool,
    order_key: bytes,
) -> CompiledQuery:
    if template.statistic.kind is StatisticKind.OVERLAP_COUNT:
        # Overlaps run through the protocol (node/overlap_source.py selects the units).
        raise ValueError("an overlap template is not compiled to a count")
    ds = schemas.dataset(template.dataset)
    assert ds is not None
    source = ds.sources[template.source]
    b = _Builder(values)
    stat = template.statistic
    unit = _q(source.unit)

    # Parameters bind in the order they are built, which must be their order in the SQL
    # text: the rank, the cell, the clamped value, then the WHERE clause.
    rank = f"{rank_expr(b, order_key)} AS r"
    cell = cell_expr(b, template)

    cell_sql = f"({cell}) AS cell"
    value = ""
    value_present: list[str] = []
    if stat.kind in (StatisticKind.SUM, StatisticKind.MEAN):
        assert stat.column is not None
        value_present.append(f"{_q(stat.column)} IS NOT NULL")
        value = (
            f", least(greatest(CAST({_q(stat.column)} AS BIGINT), {b.bind(stat.lower)}), "
            f"{b.bind(stat.upper)}) AS v"
        )
    by = f", {_q(stat.by)} AS b" if stat.by is not None else ""
    where = [b.filter(f) for f in template.filters]
    where.append(f"{unit} IS NOT NULL")
    if exclude_opted_out and ds.opt_out_column is not None:
        where.append(opt_out_clause(ds, source))
    where.extend(value_present)
    prefix = (
        f"WITH src AS ({source.sql}), "
        f"f AS (SELECT {unit} AS u, {rank}, {cell_sql}{value}{by} FROM src "
        f"WHERE {' AND '.join(where)}), "
        f"g AS (SELECT *, ((r >> {_CELL_BITS}) << {_CELL_BITS}) | CAST(cell AS UBIGINT) AS k "
        "FROM f WHERE cell IS NOT NULL)"
    )
    # Windows partition by (hash(u), u): the same partitions as by u, sorted on an
    # integer first (measured about twice as fast as on the text key alone).
    per_unit = "PARTITION BY hash(u), u"
    if stat.kind is StatisticKind.COUNT_UNITS:
        measures: tuple[str, ...] = ("count",)
        # `k` is distinct between cells of a unit, so no two cells tie.
        order = unit_order(stat.choose)
        if stat.max_cells_per_unit == 1 and stat.choose is None:
            # The lowest key's low bits are its cell: a plain min, no arg_min needed.
            mask = (1 << _CELL_BITS) - 1
            body = (
                f"SELECT cell, count(*) FROM (SELECT CAST(min(k) & {mask} AS INTEGER) AS cell "
                "FROM g GROUP BY u) GROUP BY cell"
            )
        elif stat.max_cells_per_unit == 1:
            body = (
                f"SELECT cell, count(*) FROM (SELECT arg_min(cell, {order}) AS cell "
                "FROM g GROUP BY u) GROUP BY cell"
            )
        else:
            # Each unit's distinct cells, ranked by their first record, cut at the cap.
            cap = b.bind(stat.max_cells_per_unit)
            body = (
                f"SELECT cell, count(*) FROM (SELECT cell, row_number() OVER ({per_unit} "
                f"ORDER BY o) AS rn FROM (SELECT u, cell, min({order}) AS o FROM g "
                f"GROUP BY u, cell)) WHERE rn <= {cap} GROUP BY cell"
            )
    elif stat.kind is StatisticKind.COUNT_RECORDS:
        measures = ("count",)
        # Each unit's records in keyed order, the first `cap` kept.
        cap = b.bind(stat.max_records_per_unit)
        body = (
            f"SELECT cell, count(*) FROM (SELECT cell, row_number() OVER ({per_unit} "
            f"ORDER BY k) AS rn FROM g) WHERE rn <= {cap} GROUP BY cell"
        )
    else:
        measures = ("sum", "count") if stat.kind is StatisticKind.MEAN else ("sum",)
        # Each unit's records in keyed order (then value: equal keys are the same
        # cell), the first `cap` kept.
        cap = b.bind(stat.max_records_per_unit)
        body = (
            f"SELECT cell, sum(v), count(*) FROM (SELECT cell, v, row_number() OVER "
            f"({per_unit} ORDER BY k, v) AS rn FROM g) WHERE rn <= {cap} GROUP BY cell"
        )
    return CompiledQuery(f"{prefix} {body}", tuple(b.params), measures, template.n_cells)


def run(cursor: Any, compiled: CompiledQuery) -> dict[str, IntVector]:
    """Execute on a DuckDB cursor and return one dense int64 vector per measure."""
    rows = cursor.execute(compiled.sql, list(compiled.params)).fetchall()
    out = {m: np.zeros(compiled.n_cells, dtype=np.int64) for m in compiled.measures}
    for row in rows:
        cell = int(row[0])
        if compiled.measures == ("sum", "count"):
            out["sum"][cell] = int(row[1])
            out["count"][cell] = int(row[2])
        else:
            out[compiled.measures[0]][cell] = int(row[1])
    return out
