"""node/engine/cube.py: capped counts and sums with one varying filter, from a table
made once per frame, equal to the compiler's for every values asked of that frame."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera import schemas
from tessera.node import compiler
from tessera.node.engine import bound, codes, cube, execute
from tessera.node.engine import frame as frames
from tessera.templates import bind
from tessera.templates.model import DateParam, EnumParam, Template
from tests.unit.node.engine.test_engine_matches_compiler import CHUNKS, many_per_unit, parse_or_skip
from tests.unit.node.test_compiler_reference import (
    CODES,
    ORDER_KEY,
    PARAM_MAX,
    PARAM_MIN,
    SCRATCH,
    Ed,
    assert_vectors_equal,
    date_param,
    ed_rows,
    health_templates,
    template_dict,
    write_db,
)


@st.composite
def one_varying_filter(draw: st.DrawFn) -> tuple[Template, dict[str, Any]]:
    """A health template whose only filter that reads a parameter is a period or an
    enum (what a table serves), over a capped count, sum or mean, with its values."""
    d, raw = draw(health_templates())
    d["filters"] = [f for f in d["filters"] if not _reads_a_parameter(f)]
    d["parameters"] = {}
    if draw(st.booleans()):
        d["parameters"]["start"] = date_param()
        end = draw(st.sampled_from(["2024-06-30", "2022-01-31"]))
        varying = {"kind": "between", "column": "arrival_date", "start": "start", "end": end}
        raw = {"start": draw(st.dates(PARAM_MIN, PARAM_MAX)).isoformat()}
    else:
        allowed = draw(st.lists(st.sampled_from(CODES), min_size=1, max_size=4, unique=True))
        d["parameters"]["category"] = {"type": "enum", "values": allowed, "description": ""}
        varying = {"kind": "in", "column": "attendance_category", "param": "category"}
        raw = {"category": draw(st.sampled_from(allowed))}
    d["filters"].insert(draw(st.integers(0, len(d["filters"]))), varying)
    if d["statistic"]["kind"] == "count_units":
        d["statistic"] = {"kind": "count_records", "max_records_per_unit": draw(st.integers(1, 4))}
    return parse_or_skip(d), raw


def _reads_a_parameter(f: dict[str, Any]) -> bool:
    return "param" in f or (f["kind"] == "between" and not _is_date(f["start"], f["end"]))


def _is_date(*texts: str) -> bool:
    return all(t[:1].isdigit() for t in texts)


@st.composite
def other_values(draw: st.DrawFn, t: Template) -> dict[str, Any]:
    """Fresh raw values for every parameter of `t`."""
    out: dict[str, Any] = {}
    for p in t.parameters:
        name = p.name
        if isinstance(p, DateParam):
            out[name] = draw(st.dates(PARAM_MIN, PARAM_MAX)).isoformat()
        else:
            assert isinstance(p, EnumParam)
            out[name] = draw(st.sampled_from(sorted(p.values)))
    return out


def _frame_and_con(db: Path, t: Template) -> tuple[frames.Frame, duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(db), read_only=True)
    frame = frames.build(con, t.dataset, t.source, ORDER_KEY)
    assert frame is not None
    return frame, con


def _check_many(
    rows: list[Ed], t: Template, asked: list[dict[str, Any]], chunk: int, levels: int = 32
) -> frames.Frame:
    """Every values in `asked` on one frame (its table made by the first): the compiler's
    vectors each time. `levels`: units with more records are decided row by row."""
    exclude = t.purpose != schemas.DIRECT_CARE
    saved = codes.CHUNK, bound._CHUNK_ROWS, cube._LEVELS
    codes.CHUNK, bound._CHUNK_ROWS, cube._LEVELS = chunk, chunk, levels
    try:
        with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
            db = write_db(
                Path(d) / "health.duckdb", "health", {"ed_attendances": [r._asdict() for r in rows]}
            )
            frame, con = _frame_and_con(db, t)
            with con:
                for raw in asked:
                    values = bind(t, raw)
                    q = compiler.compile_query(
                        t, values, exclude_opted_out=exclude, order_key=ORDER_KEY
                    )
                    got = execute.run(frame, t, values, exclude_opted_out=exclude)
                    assert got is not None
                    assert_vectors_equal(got, compiler.run(con.cursor(), q))
    finally:
        codes.CHUNK, bound._CHUNK_ROWS, cube._LEVELS = saved
    return frame


@settings(max_examples=150)
@given(
    data=st.data(),
    rows=st.one_of(ed_rows, many_per_unit),
    chunk=CHUNKS,
    levels=st.sampled_from([1, 3, 32]),
)
def test_one_table_answers_every_values_as_the_compiler(
    data: st.DataObject, rows: list[Ed], chunk: int, levels: int
) -> None:
    t, raw = data.draw(one_varying_filter())
    asked = [raw, *(data.draw(other_values(t)) for _ in range(3))]
    frame = _check_many(rows, t, asked, chunk, levels)
    if frame.n and not frame.ties and t.n_cells <= 100:  # else the table can be too wide
        assert frame.cached(("cubes",), dict), "the table did not answer"


CAPPED = [Ed("9434765919", date(2020, 1, 1 + i), i % 4, CODES[i % 3], True) for i in range(9)] + [
    Ed("9434765870", date(2020, 1, 2), 2, CODES[0], True)
]


@pytest.mark.parametrize("levels", [2, 32])
@pytest.mark.parametrize("kind", ["count_records", "sum", "mean"])
def test_the_cap_follows_the_period_asked(kind: str, levels: int) -> None:
    """One unit with nine records: which three count depends on the period, so the
    late rows are decided per query, rank by rank or (more than `levels`) row by row."""
    t = _from_a_date(kind, 3)
    asked = [{"start": date(2020, 1, k).isoformat()} for k in (1, 3, 6, 8, 10)]
    frame = _check_many(CAPPED, t, asked, 1 << 16, levels)
    assert frame.cached(("cubes",), dict)


def _from_a_date(kind: str, cap: int) -> Template:
    """Records from a date the analyst gives to the end of 2020, capped at `cap`."""
    stat: dict[str, Any] = {"kind": kind, "max_records_per_unit": cap}
    if kind != "count_records":
        stat.update(column="age_years", lower=0, upper=5)
    params = {
        "start": {"type": "date", "min": "2019-06-01", "max": "2024-06-30", "description": ""}
    }
    d = template_dict(
        filters=[
            {"kind": "between", "column": "arrival_date", "start": "start", "end": "2020-12-31"}
        ],
        group_by=[],
        statistic=stat,
        parameters=params,
        purpose="service_planning",
    )
    return parse_or_skip(d)


def test_the_tables_kept_are_bounded_in_number_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each cap is a table of its own; a frame keeps the newest few, within a byte
    budget, and one evicted is made again (the same answers) when asked."""
    raw = {"start": "2020-01-03"}
    with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
        db = write_db(
            Path(d) / "health.duckdb", "health", {"ed_attendances": [r._asdict() for r in CAPPED]}
        )
        frame, con = _frame_and_con(db, _from_a_date("count_records", 1))
        con.close()
        first = execute.run(
            frame,
            _from_a_date("count_records", 1),
            bind(_from_a_date("count_records", 1), raw),
            exclude_opted_out=True,
        )
        for cap in range(2, 7):
            t = _from_a_date("count_records", cap)
            execute.run(frame, t, bind(t, raw), exclude_opted_out=True)
        assert len(frame.cached(("cubes",), dict)) == cube._KEPT
        monkeypatch.setattr(cube, "_KEPT_BYTES", 1)
        t1 = _from_a_date("count_records", 1)
        again = execute.run(frame, t1, bind(t1, raw), exclude_opted_out=True)
        assert len(frame.cached(("cubes",), dict)) == 1  # the newest, whatever its size
        assert first is not None and again is not None
        assert_vectors_equal(again, first)


def test_a_table_too_wide_for_its_frame_is_not_made() -> None:
    frame = frames.Frame(
        n=0,
        unit_of_row=np.zeros(0, np.int32),
        starts=np.zeros(0, np.int32),
        opted_out=None,
        columns={},
        ties=0,
    )
    wide = codes.Lut(np.zeros(1 << 15, dtype=np.int32), np.zeros(0, np.uint16), ("coded", "x"))
    assert cube.answer(frame, [], wide, 3, 64) is None
    unnamed = codes.Lut(np.zeros(4, dtype=np.int32), np.zeros(0, np.uint8), None)
    assert cube.answer(frame, [], unnamed, 3, 1) is None
