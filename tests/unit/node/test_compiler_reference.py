"""The compiler against a brute-force Python reference of the same semantics.

Random small `health` datasets are written to real DuckDB files, random templates
are built as canonical dicts and parsed, and the exact vectors that
`node.compiler` returns are compared with a plain-Python re-implementation of the
filter, cell-index and contribution-bounding rules in the compiler's docstring.
Hand-computed cases pin the reference itself, and the two reference templates
run on small hand-made SSDA903 and CIN files.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera import schemas
from tessera.node import compiler
from tessera.templates import bind, load_toml
from tessera.templates.model import (
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
    StatisticKind,
    Template,
)
from tessera.templates.parse import parse, to_dict

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "templates"
KEY = "ed25519:" + "0" * 64
SQL_TYPES = {
    schemas.ColumnType.TEXT: "VARCHAR",
    schemas.ColumnType.CODE: "VARCHAR",
    schemas.ColumnType.DATE: "DATE",
    schemas.ColumnType.INT: "BIGINT",
    schemas.ColumnType.BOOL: "BOOLEAN",
}
CODES = schemas.ED_CATEGORIES
UNITS = ("9434765919", "9434765870", "4010232137", "9990000018", "9990000026")
DATA_FIRST, DATA_LAST = date(2020, 1, 1), date(2023, 12, 31)
PARAM_MIN, PARAM_MAX = date(2019, 6, 1), date(2024, 6, 30)
# DuckDB files for the Hypothesis examples: on a RAM disk when there is one (the files
# are real DuckDB files either way; this only spares the disk a few hundred fsyncs).
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


class Ed(NamedTuple):
    """One row of health.ed_attendances, in the schema's column order."""

    nhs_number: str | None
    arrival_date: date
    age_years: int
    attendance_category: str | None
    injury: bool
    safeguarding_concern: bool | None = None
    opted_out: bool | None = False


# --- databases ------------------------------------------------------------------------


def write_db(path: Path, dataset: str, rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    """A DuckDB file with every table of `dataset` (typed as ingest types them)."""
    ds = schemas.dataset(dataset)
    assert ds is not None
    with duckdb.connect(str(path)) as con:
        for table in ds.tables:
            cols = ", ".join(f'"{c.name}" {SQL_TYPES[c.type]}' for c in table.columns)
            con.execute(f'CREATE TABLE "{table.name}" ({cols})')
            data = rows.get(table.name, ())
            for r in data:
                unknown = set(r) - {c.name for c in table.columns}
                assert not unknown, unknown
            if data:
                # One multi-row INSERT: far faster than executemany in DuckDB.
                row = "(" + ", ".join("?" for _ in table.columns) + ")"
                con.execute(
                    f'INSERT INTO "{table.name}" VALUES ' + ", ".join(row for _ in data),
                    [r.get(c.name) for r in data for c in table.columns],
                )
    return path


def compile_and_run(
    db: Path, template: Template, values: dict[str, ParamValue]
) -> dict[str, np.ndarray]:
    # As the node does: opted-out persons are excluded unless the purpose is direct care.
    compiled = compiler.compile_query(
        template, values, exclude_opted_out=template.purpose != schemas.DIRECT_CARE
    )
    with duckdb.connect(str(db), read_only=True) as con:
        cur = con.cursor()
        try:
            return compiler.run(cur, compiled)
        finally:
            cur.close()


def run_health(
    template: Template, values: dict[str, ParamValue], rows: Sequence[Ed]
) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        db = write_db(
            Path(d) / "health.duckdb", "health", {"ed_attendances": [r._asdict() for r in rows]}
        )
        return compile_and_run(db, template, values)


# --- the reference ---------------------------------------------------------------------


def _date(ref: DateRef, values: Mapping[str, ParamValue]) -> date:
    if ref.param is not None:
        v = values[ref.param]
        assert isinstance(v, date)
        return v
    assert ref.fixed is not None
    return ref.fixed


def _passes(f: Filter, row: Ed, values: Mapping[str, ParamValue]) -> bool:
    if isinstance(f, InFilter):
        v = getattr(row, f.column)
        allowed = (values[f.param],) if f.param is not None else f.values
        return v is not None and v in allowed
    if isinstance(f, EqualsFilter):
        v = getattr(row, f.column)
        return v is not None and v == f.value
    if isinstance(f, RangeFilter):
        v = getattr(row, f.column)
        return v is not None and f.min <= v <= f.max
    if isinstance(f, BetweenFilter):
        v = getattr(row, f.column)
        return v is not None and _date(f.start, values) <= v <= _date(f.end, values)
    raise AssertionError(f"filter kind not used for health: {f!r}")


def _index(d: Dimension, row: Ed) -> int | None:
    """The row's index along one dimension, or None when outside its domain."""
    if isinstance(d, CategoriesDim):
        code = getattr(row, d.column)
        for i, c in enumerate(d.categories):
            if code is not None and code in c.codes:
                return i
        # `other` takes every code not listed, NULL included.
        return len(d.categories) if d.other is not None else None
    if isinstance(d, BandsDim):
        assert d.column is not None
        v = getattr(row, d.column)
        for i, b in enumerate(d.bands):
            if v is not None and b.min <= v <= b.max:
                return i
        return None
    assert isinstance(d, MonthsDim)
    v = getattr(row, d.column)
    if v is None:
        return None
    k = (v.year - d.first[0]) * 12 + v.month - d.first[1]
    return k if 0 <= k < len(d.labels) else None


def reference(
    template: Template,
    values: Mapping[str, ParamValue],
    rows: Sequence[Ed],
    *,
    exclude_opted_out: bool,
) -> dict[str, np.ndarray]:
    stat = template.statistic
    per_unit: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row in rows:
        if row.nhs_number is None:
            continue
        if exclude_opted_out and row.opted_out is not False:  # unknown counts as opted out
            continue
        if not all(_passes(f, row, values) for f in template.filters):
            continue
        idx = [_index(d, row) for d in template.group_by]
        if any(i is None for i in idx):
            continue
        cell = 0
        for i, n in zip(idx, template.shape, strict=True):
            assert i is not None
            cell = cell * n + i
        value = min(max(row.age_years, stat.lower), stat.upper)
        per_unit[row.nhs_number].append((cell, value))

    count = np.zeros(template.n_cells, dtype=np.int64)
    total = np.zeros(template.n_cells, dtype=np.int64)
    for records in per_unit.values():
        if stat.kind is StatisticKind.COUNT_UNITS:
            for cell in sorted({c for c, _ in records})[: stat.max_cells_per_unit]:
                count[cell] += 1
        elif stat.kind is StatisticKind.COUNT_RECORDS:
            for cell, _ in sorted(records)[: stat.max_records_per_unit]:
                count[cell] += 1
        else:
            for cell, v in sorted(records)[: stat.max_records_per_unit]:
                count[cell] += 1
                total[cell] += v
    if stat.kind is StatisticKind.SUM:
        return {"sum": total}
    if stat.kind is StatisticKind.MEAN:
        return {"sum": total, "count": count}
    return {"count": count}


def assert_vectors_equal(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, vec in want.items():
        assert got[name].dtype == np.int64
        assert got[name].shape == vec.shape
        np.testing.assert_array_equal(got[name], vec, err_msg=name)


# --- templates as canonical dicts --------------------------------------------------------


def template_dict(
    *,
    filters: list[dict[str, Any]] | None = None,
    group_by: list[dict[str, Any]] | None = None,
    statistic: dict[str, Any] | None = None,
    parameters: dict[str, dict[str, Any]] | None = None,
    purpose: str = "service_planning",
) -> dict[str, Any]:
    return {
        "id": "ed-reference-test",
        "version": 1,
        "title": "Reference test",
        "purpose": purpose,
        "description": "",
        "legal_basis": "test",
        "data": {
            "dataset": "health",
            "schema_version": 1,
            "source": "ed_attendances",
            "privacy_unit": "nhs_number",
        },
        "parameters": parameters or {},
        "filters": filters or [],
        "group_by": group_by or [],
        "statistic": statistic or {"kind": "count_records", "max_records_per_unit": 1},
        "privacy": {"epsilon": 1.0},
        "output": {"min_count": 0, "round_to": 1},
        "access": {
            "analysts": [{"name": "Analyst", "key": KEY}],
            "expires": "2030-01-01",
            "quorum": 1,
            "per_node_breakdown": False,
        },
    }


def months_dim(name: str, first: str, last: str) -> dict[str, Any]:
    return {"name": name, "kind": "months", "column": "arrival_date", "first": first, "last": last}


def date_param() -> dict[str, Any]:
    return {
        "type": "date",
        "min": PARAM_MIN.isoformat(),
        "max": PARAM_MAX.isoformat(),
        "description": "",
    }


def _draw_filter(
    draw: st.DrawFn, i: int, params: dict[str, dict[str, Any]], values: dict[str, Any]
) -> dict[str, Any]:
    kind = draw(st.sampled_from(["equals", "range", "between", "in"]))
    if kind == "equals":
        column = draw(st.sampled_from(["injury", "safeguarding_concern"]))
        return {"kind": "equals", "column": column, "value": draw(st.booleans())}
    if kind == "range":
        lo = draw(st.integers(-3, 22))
        hi = draw(st.integers(lo, lo + 15))
        return {"kind": "range", "column": "age_years", "min": lo, "max": hi}
    if kind == "between":
        ends = sorted(draw(st.lists(st.dates(PARAM_MIN, PARAM_MAX), min_size=2, max_size=2)))
        refs = []
        for which, d in zip(("start", "end"), ends, strict=True):
            if draw(st.booleans()):
                name = f"{which}_{i}"
                params[name] = date_param()
                values[name] = d.isoformat()
                refs.append(name)
            else:
                refs.append(d.isoformat())
        return {"kind": "between", "column": "arrival_date", "start": refs[0], "end": refs[1]}
    codes = draw(st.lists(st.sampled_from(CODES), min_size=1, max_size=4, unique=True))
    if draw(st.booleans()):
        name = f"category_{i}"
        params[name] = {"type": "enum", "values": codes, "description": ""}
        values[name] = draw(st.sampled_from(codes))
        return {"kind": "in", "column": "attendance_category", "param": name}
    return {"kind": "in", "column": "attendance_category", "values": codes}


def _draw_dimension(draw: st.DrawFn, i: int) -> dict[str, Any]:
    name = f"dim_{i}"
    kind = draw(st.sampled_from(["categories", "bands", "months"]))
    if kind == "categories":
        # Each code goes to one of up to four categories, or is left unlisted (-1).
        assign = draw(st.lists(st.integers(-1, 3), min_size=len(CODES), max_size=len(CODES)))
        order = draw(st.permutations(CODES))
        groups: dict[int, list[str]] = {}
        for code in order:
            k = assign[CODES.index(code)]
            if k >= 0:
                groups.setdefault(k, []).append(code)
        if not groups:
            groups = {0: [order[0]]}
        cats = [{"label": f"cat {k}", "codes": v} for k, v in sorted(groups.items())]
        d: dict[str, Any] = {
            "name": name,
            "kind": "categories",
            "column": "attendance_category",
            "categories": draw(st.permutations(cats)),
        }
        if draw(st.booleans()):
            d["other"] = "other"
        return d
    if kind == "bands":
        # Non-overlapping bands, maybe with gaps, maybe reaching outside 0..20, in any order.
        spans = draw(
            st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6)), min_size=1, max_size=4)
        )
        cur = draw(st.integers(-4, 3))
        bands = []
        for j, (gap, width) in enumerate(spans):
            lo = cur + gap
            bands.append({"label": f"band {j}", "min": lo, "max": lo + width})
            cur = lo + width + 1
        return {
            "name": name,
            "kind": "bands",
            "bands": draw(st.permutations(bands)),
            "column": "age_years",
        }
    y0, m0 = draw(st.integers(2019, 2023)), draw(st.integers(1, 12))
    k = y0 * 12 + m0 - 1 + draw(st.integers(0, 29))
    return months_dim(name, f"{y0:04d}-{m0:02d}", f"{k // 12:04d}-{k % 12 + 1:02d}")


def _draw_statistic(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["count_units", "count_records", "sum", "mean"]))
    if kind == "count_units":
        return {"kind": kind, "max_cells_per_unit": draw(st.integers(1, 3))}
    if kind == "count_records":
        return {"kind": kind, "max_records_per_unit": draw(st.integers(1, 4))}
    lower = draw(st.integers(-5, 15))
    upper = draw(st.integers(lower, 25))
    if lower == upper == 0:
        upper = 1
    return {
        "kind": kind,
        "column": "age_years",
        "lower": lower,
        "upper": upper,
        "max_records_per_unit": draw(st.integers(1, 4)),
    }


@st.composite
def health_templates(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A canonical template dict over health.ed_attendances and raw parameter values."""
    params: dict[str, dict[str, Any]] = {}
    values: dict[str, Any] = {}
    filters = [_draw_filter(draw, i, params, values) for i in range(draw(st.integers(0, 3)))]
    dims = [_draw_dimension(draw, i) for i in range(draw(st.integers(0, 3)))]
    d = template_dict(
        filters=filters,
        group_by=dims,
        statistic=_draw_statistic(draw),
        parameters=params,
        purpose=draw(st.sampled_from(["direct_care", "service_planning", "research"])),
    )
    return d, values


ed_rows = st.lists(
    st.builds(
        Ed,
        nhs_number=st.sampled_from((*UNITS, None)),
        arrival_date=st.dates(DATA_FIRST, DATA_LAST),
        age_years=st.integers(0, 20),
        attendance_category=st.sampled_from((*CODES, None)),
        injury=st.booleans(),
        safeguarding_concern=st.sampled_from((True, False, None)),
        opted_out=st.sampled_from((False, True, None)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(spec=health_templates(), rows=ed_rows)
def test_compiler_matches_reference(
    spec: tuple[dict[str, Any], dict[str, Any]], rows: list[Ed]
) -> None:
    d, raw_values = spec
    template = parse(d)
    assert to_dict(template) == d  # the generated dicts are exactly the canonical form
    values = bind(template, raw_values)
    got = run_health(template, values, rows)
    want = reference(
        template, values, rows, exclude_opted_out=template.purpose != schemas.DIRECT_CARE
    )
    assert all(len(v) == template.n_cells for v in want.values())
    assert_vectors_equal(got, want)


# --- hand-computed cases (these also pin the reference) -----------------------------------

A, B, C = UNITS[:3]
JAN, FEB, MAR = date(2022, 1, 10), date(2022, 2, 10), date(2022, 3, 10)
Q1 = [months_dim("month", "2022-01", "2022-03")]
# Unit A: two records in January (ages 3, 17), three in February (ages 1, 8, 12);
# unit B: one record in February (age 5). March has no records at all.
CAPPED_ROWS = [
    Ed(A, JAN, 3, "1", True),
    Ed(A, JAN + timedelta(days=1), 17, "1", True),
    Ed(A, FEB, 12, "2", True),
    Ed(A, FEB, 1, "2", True),
    Ed(A, FEB + timedelta(days=2), 8, "3", True),
    Ed(B, FEB, 5, "4", True),
]


def _check(
    d: dict[str, Any],
    rows: Sequence[Ed],
    want: Mapping[str, list[int]],
    raw_values: Mapping[str, Any] | None = None,
) -> None:
    template = parse(d)
    values = bind(template, dict(raw_values or {}))
    expected = {k: np.array(v, dtype=np.int64) for k, v in want.items()}
    exclude = template.purpose != schemas.DIRECT_CARE
    assert_vectors_equal(reference(template, values, rows, exclude_opted_out=exclude), expected)
    assert_vectors_equal(run_health(template, values, rows), expected)


@pytest.mark.parametrize(
    ("statistic", "want"),
    [
        # A is counted once, in its lowest cell.
        ({"kind": "count_units", "max_cells_per_unit": 1}, {"count": [1, 1, 0]}),
        ({"kind": "count_units", "max_cells_per_unit": 2}, {"count": [1, 2, 0]}),
        # A's five records are cut to two, taken in cell order: both January ones.
        ({"kind": "count_records", "max_records_per_unit": 2}, {"count": [2, 1, 0]}),
        # Three: both January records and the first February one.
        ({"kind": "count_records", "max_records_per_unit": 3}, {"count": [2, 2, 0]}),
        ({"kind": "count_records", "max_records_per_unit": 10}, {"count": [2, 4, 0]}),
        # Values clamped to [2, 10]: A Jan 3, 10; A Feb 10, 2, 8 -> kept in (cell, value)
        # order with cap 3: Jan 3, Jan 10, Feb 2. B Feb 5.
        (
            {
                "kind": "sum",
                "column": "age_years",
                "lower": 2,
                "upper": 10,
                "max_records_per_unit": 3,
            },
            {"sum": [13, 7, 0]},
        ),
        (
            {
                "kind": "mean",
                "column": "age_years",
                "lower": 2,
                "upper": 10,
                "max_records_per_unit": 4,
            },
            {"sum": [13, 2 + 8 + 5, 0], "count": [2, 3, 0]},
        ),
        # A negative lower bound leaves these ages alone; the upper bound cuts 17 and 12.
        (
            {
                "kind": "sum",
                "column": "age_years",
                "lower": -7,
                "upper": 9,
                "max_records_per_unit": 5,
            },
            {"sum": [3 + 9, 9 + 1 + 8 + 5, 0]},
        ),
    ],
)
def test_unit_above_cap_and_empty_cell(
    statistic: dict[str, Any], want: dict[str, list[int]]
) -> None:
    _check(template_dict(group_by=Q1, statistic=statistic), CAPPED_ROWS, want)


def test_count_units_takes_the_lowest_cells() -> None:
    rows = [Ed(A, date(2022, m, 1), 4, None, True) for m in (5, 2, 4, 1)]
    rows.append(Ed(B, date(2022, 6, 1), 4, None, True))
    d = template_dict(
        group_by=[months_dim("month", "2022-01", "2022-06")],
        statistic={"kind": "count_units", "max_cells_per_unit": 3},
    )
    _check(d, rows, {"count": [1, 1, 0, 1, 0, 1]})


def test_no_dimensions_gives_one_cell() -> None:
    d = template_dict(statistic={"kind": "count_units", "max_cells_per_unit": 1})
    _check(d, CAPPED_ROWS, {"count": [2]})
    _check(d, [], {"count": [0]})


def test_categories_other_takes_unlisted_and_null_codes() -> None:
    rows = [
        Ed(A, JAN, 3, "1", True),
        Ed(B, JAN, 3, "3", True),  # unlisted
        Ed(C, JAN, 3, None, True),  # NULL: CASE ... ELSE, so `other` too
    ]
    dim: dict[str, Any] = {
        "name": "category",
        "kind": "categories",
        "column": "attendance_category",
        "categories": [
            {"label": "Minor", "codes": ["1"]},
            {"label": "Major", "codes": ["2", "4"]},
        ],
    }
    stat = {"kind": "count_units", "max_cells_per_unit": 1}
    _check(
        template_dict(group_by=[{**dim, "other": "Other"}], statistic=stat),
        rows,
        {"count": [1, 0, 2]},
    )
    # Without `other`, unlisted and NULL codes are dropped; the empty cell is still there.
    _check(template_dict(group_by=[dim], statistic=stat), rows, {"count": [1, 0]})


def test_row_major_cells_over_three_dimensions() -> None:
    dims = [
        {
            "name": "category",
            "kind": "categories",
            "column": "attendance_category",
            "categories": [{"label": "Minor", "codes": ["1", "2"]}],
            "other": "Other",
        },
        {
            "name": "age",
            "kind": "bands",
            "column": "age_years",
            # Declared out of order: the index is the declared position.
            "bands": [
                {"label": "older", "min": 5, "max": 20},
                {"label": "young", "min": 0, "max": 4},
            ],
        },
        months_dim("month", "2022-01", "2022-03"),
    ]
    rows = [
        Ed(A, MAR, 2, "4", True),  # other, young, March -> (1, 1, 2) = 1*6 + 1*3 + 2 = 11
        Ed(B, JAN, 19, "2", True),  # minor, older, January -> 0
        Ed(C, FEB, 21, "1", True),  # age outside every band: dropped
    ]
    want = [0] * 12
    want[11] = want[0] = 1
    _check(
        template_dict(
            group_by=dims, statistic={"kind": "count_records", "max_records_per_unit": 1}
        ),
        rows,
        {"count": want},
    )


@pytest.mark.parametrize(
    "filters",
    [
        [{"kind": "range", "column": "age_years", "min": 100, "max": 120}],
        [
            {
                "kind": "between",
                "column": "arrival_date",
                "start": "2022-03-01",
                "end": "2022-01-01",
            }
        ],
        [
            {"kind": "equals", "column": "injury", "value": True},
            {"kind": "equals", "column": "injury", "value": False},
        ],
        [
            {"kind": "in", "column": "attendance_category", "values": ["4"]},
            {
                "kind": "in",
                "column": "attendance_category",
                "values": ["1"],
            },
        ],
    ],
)
@pytest.mark.parametrize(
    "statistic",
    [
        {"kind": "count_units", "max_cells_per_unit": 2},
        {"kind": "count_records", "max_records_per_unit": 2},
        {"kind": "mean", "column": "age_years", "lower": -3, "upper": 9, "max_records_per_unit": 2},
    ],
)
def test_filter_that_excludes_everything(
    filters: list[dict[str, Any]], statistic: dict[str, Any]
) -> None:
    d = template_dict(filters=filters, group_by=Q1, statistic=statistic)
    want = {m: [0, 0, 0] for m in (("sum", "count") if statistic["kind"] == "mean" else ("count",))}
    _check(d, CAPPED_ROWS, want)


def test_parameterised_filters_with_sum() -> None:
    """Date and enum parameters bound alongside the statistic's clamping bounds."""
    rows = [
        Ed(A, date(2021, 12, 31), 20, "1", True),  # before the period
        Ed(A, date(2022, 1, 1), 20, "1", True),  # first day: clamped to 15
        Ed(A, date(2022, 2, 28), 0, "1", True),  # last day: 0 is inside [-2, 15]
        Ed(A, date(2022, 3, 1), 7, "1", True),  # after the period
        Ed(B, date(2022, 1, 5), 9, "2", True),  # other category
        Ed(C, date(2022, 2, 5), 11, "1", False),  # not an injury
    ]
    d = template_dict(
        parameters={
            "start": date_param(),
            "end": date_param(),
            "category": {
                "type": "enum",
                "values": ["1", "2"],
                "description": "",
            },
        },
        filters=[
            {"kind": "equals", "column": "injury", "value": True},
            {"kind": "between", "column": "arrival_date", "start": "start", "end": "end"},
            {"kind": "in", "column": "attendance_category", "param": "category"},
            {"kind": "range", "column": "age_years", "min": 0, "max": 20},
        ],
        group_by=[months_dim("month", "2022-01", "2022-02")],
        statistic={
            "kind": "mean",
            "column": "age_years",
            "lower": -2,
            "upper": 15,
            "max_records_per_unit": 3,
        },
    )
    raw = {"start": "2022-01-01", "end": "2022-02-28", "category": "1"}
    _check(d, rows, {"sum": [15, 0], "count": [1, 1]}, raw)
    _check(d, rows, {"sum": [9, 0], "count": [1, 0]}, {**raw, "category": "2"})


@pytest.mark.parametrize(
    ("purpose", "want"),
    [
        ("direct_care", [3, 0]),  # C: two records, cap 1
        ("service_planning", [1, 0]),
        ("research", [1, 0]),
        ("statutory_return", [1, 0]),
    ],
)
def test_opted_out_rows_excluded_unless_direct_care(purpose: str, want: list[int]) -> None:
    rows = [
        Ed(A, JAN, 3, "1", True, opted_out=False),
        Ed(B, JAN, 3, "1", True, opted_out=True),
        Ed(C, JAN, 3, "1", True, opted_out=None),  # unknown status counts as opted out
        Ed(C, FEB, 3, "1", True, opted_out=None),
    ]
    d = template_dict(
        purpose=purpose,
        group_by=[months_dim("month", "2022-01", "2022-02")],
        statistic={"kind": "count_records", "max_records_per_unit": 1},
    )
    _check(d, rows, {"count": want})


def test_rows_without_a_unit_are_ignored() -> None:
    rows = [Ed(None, JAN, 3, "1", True), Ed(None, JAN, 4, "1", True), Ed(A, JAN, 5, "1", True)]
    d = template_dict(statistic={"kind": "count_records", "max_records_per_unit": 5})
    _check(d, rows, {"count": [1]})


# --- the reference templates on hand-made SSDA903 and CIN files ----------------------------


def test_reference_template_1_children_looked_after(tmp_path: Path) -> None:
    t = load_toml((EXAMPLES / "cla-by-age-and-placement.toml").read_text())
    header = [
        {"CHILD": "A", "SEX": "1", "DOB": date(2020, 4, 1)},  # 3 on the date: "1-4"
        {"CHILD": "B", "SEX": "2", "DOB": date(2010, 3, 31)},  # 14 that day: "10-15"
        {"CHILD": "C", "SEX": "1", "DOB": date(2008, 4, 1)},  # 15, 16 the next day
        {"CHILD": "D", "SEX": "2", "DOB": date(2015, 1, 1)},
        {"CHILD": "E", "SEX": "1", "DOB": date(2015, 1, 1)},
        {"CHILD": "F", "SEX": "2", "DOB": date(2023, 6, 1)},  # 0: "under 1"
        {"CHILD": "G", "SEX": "1", "DOB": date(1990, 1, 1)},  # 34: outside every band
    ]

    def ep(child: str, decom: date, dec: date | None, place: str) -> dict[str, Any]:
        return {
            "CHILD": child,
            "DECOM": decom,
            "DEC": dec,
            "PLACE": place,
            "LS": "C2",
            "CIN": "N1",
        }

    episodes = [
        ep("A", date(2022, 1, 1), date(2023, 1, 1), "K2"),  # ended before the date
        ep("A", date(2023, 1, 1), None, "U1"),  # open: Fostering
        ep("B", date(2023, 5, 1), None, "R1"),  # two open episodes: counted once,
        ep("B", date(2024, 1, 1), None, "U2"),  # in the lowest cell (Fostering)
        ep("C", date(2024, 3, 31), date(2024, 4, 1), "Z1"),  # starts on the date: Other
        ep("D", date(2022, 1, 1), date(2024, 3, 31), "U3"),  # ends on the date: not open
        ep("E", date(2024, 4, 1), None, "U3"),  # starts after the date
        ep("F", date(2023, 7, 1), None, "H5"),  # Supported
        ep("G", date(2020, 1, 1), None, "U1"),
    ]
    db = write_db(tmp_path / "ssda903.duckdb", "ssda903", {"header": header, "episodes": episodes})
    values = bind(t, {"on_date": "2024-03-31"})
    got = compile_and_run(db, t, values)

    assert t.shape == (5, 4)
    want = np.zeros(20, dtype=np.int64)
    # cell = age bracket * 4 + placement (Fostering, Residential, Supported, Other)
    want[1 * 4 + 0] = 1  # A
    want[3 * 4 + 0] = 1  # B
    want[3 * 4 + 3] = 1  # C
    want[0 * 4 + 2] = 1  # F
    assert_vectors_equal(got, {"count": want})

    # Earlier: A (then 2) is in a residential placement and D (then 7) in foster care;
    # B, C, E and F are not yet looked after.
    got = compile_and_run(db, t, bind(t, {"on_date": "2022-06-30"}))
    want = np.zeros(20, dtype=np.int64)
    want[1 * 4 + 1] = 1  # A: K2
    want[2 * 4 + 0] = 1  # D: U3
    assert_vectors_equal(got, {"count": want})


def test_reference_template_2_referrals(tmp_path: Path) -> None:
    t = load_toml((EXAMPLES / "referrals-by-need-and-age.toml").read_text())
    children = [
        {"child_id": "X", "dob": date(2015, 6, 15), "sex": "1"},
        {"child_id": "Y", "dob": date(2010, 1, 1), "sex": "2"},
        {"child_id": "Z", "dob": date(2019, 12, 1), "sex": "1"},
        {"child_id": "W", "dob": date(2000, 1, 1), "sex": "2"},
        {"child_id": "V", "dob": date(1980, 1, 1), "sex": "2"},
    ]

    def ref(child: str, when: date, need: str | None) -> dict[str, Any]:
        return {"child_id": child, "referral_date": when, "primary_need": need, "nfa": False}

    referrals = [
        # X: five referrals; the first four at age 4, the last on the 5th birthday.
        # Capped at three, taken in cell order: three in (N1, "1-4").
        *(ref("X", date(2020, m, 10), "N1") for m in (1, 2, 3, 4)),
        ref("X", date(2020, 6, 15), "N1"),
        # Y: aged 10.
        ref("Y", date(2020, 2, 1), "N4"),
        ref("Y", date(2020, 3, 1), "N2"),
        ref("Y", date(2019, 12, 31), "N4"),  # before the period
        ref("Y", date(2020, 4, 1), None),  # no need recorded and no `other`: dropped
        # Z: aged 0. Cap three over (N1, N1, N9, N9): both N1 and one N9.
        ref("Z", date(2020, 5, 1), "N9"),
        ref("Z", date(2020, 6, 1), "N1"),
        ref("Z", date(2020, 7, 1), "N9"),
        ref("Z", date(2020, 8, 1), "N1"),
        # W: aged 20, on the first and last day of the period (both inclusive).
        ref("W", date(2020, 1, 1), "N7"),
        ref("W", date(2020, 12, 31), "N7"),
        ref("W", date(2021, 1, 1), "N7"),  # after the period
        # V: aged 40, outside every band.
        ref("V", date(2020, 5, 5), "N1"),
    ]
    db = write_db(tmp_path / "cin.duckdb", "cin", {"children": children, "referrals": referrals})
    values = bind(t, {"period_start": "2020-01-01", "period_end": "2020-12-31"})
    got = compile_and_run(db, t, values)

    assert t.shape == (9, 5)

    def cell(need: int, band: int) -> int:  # need N1..N9, band 0..4
        return (need - 1) * 5 + band

    want = np.zeros(45, dtype=np.int64)
    want[cell(1, 1)] = 3  # X: 5 referrals, counted 3 times
    want[cell(4, 3)] = 1  # Y
    want[cell(2, 3)] = 1  # Y
    want[cell(1, 0)] = 2  # Z
    want[cell(9, 0)] = 1  # Z
    want[cell(7, 4)] = 2  # W
    assert_vectors_equal(got, {"count": want})
    assert int(got["count"].sum()) == 10
