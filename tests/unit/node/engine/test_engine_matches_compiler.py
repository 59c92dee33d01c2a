"""The engine (node/engine) against the compiler (node/compiler.py) it stands in for.

Random small datasets are written to real DuckDB files; each random template is run
by the compiler on DuckDB and by the engine on the version's frame, and the exact
vectors must be equal, for every statistic, filter and dimension kind. Health data
and templates come from the compiler's own reference test; episodes (dates of birth,
intervals, ages at a date or a column, dates around 29 February) and attendance
(integer sums over a joined source) have strategies of their own here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tessera import schemas
from tessera.node import compiler, engine
from tessera.node.engine import bound, codes, execute
from tessera.node.engine import frame as frames
from tessera.node.engine import order as ordering
from tessera.templates import bind, load_toml
from tessera.templates.model import DateRef, ParamValue, Template, TemplateError
from tessera.templates.parse import parse, to_dict
from tests.unit.node.test_compiler_reference import (
    EXAMPLES,
    ORDER_KEY,
    SCRATCH,
    Ed,
    assert_vectors_equal,
    ed_rows,
    health_templates,
    template_dict,
    write_db,
)


def parse_or_skip(d: dict[str, Any]) -> Template:
    """The reference strategies can draw a domain over the cell limit: skip those."""
    try:
        return parse(d)
    except TemplateError as e:
        assume("cells" not in str(e))
        raise


def engine_and_compiler(
    db: Path, t: Template, values: dict[str, ParamValue], order_key: bytes = ORDER_KEY
) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray]]:
    exclude = t.purpose != schemas.DIRECT_CARE
    with duckdb.connect(str(db), read_only=True) as con:
        q = compiler.compile_query(t, values, exclude_opted_out=exclude, order_key=order_key)
        want = compiler.run(con.cursor(), q)
        frame = frames.build(con, t.dataset, t.source, order_key)
    assert frame is not None
    got = execute.run(frame, t, values, exclude_opted_out=exclude)
    return got, want


def check(
    dataset: str,
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    t: Template,
    values: dict[str, ParamValue],
    order_key: bytes = ORDER_KEY,
    chunk: int | None = None,
) -> dict[str, np.ndarray]:
    """`chunk`: the engine's rows per chunk (small ones make small data span chunks)."""
    saved = codes.CHUNK, bound._CHUNK_ROWS
    codes.CHUNK, bound._CHUNK_ROWS = (chunk, chunk) if chunk else saved
    try:
        with tempfile.TemporaryDirectory(dir=SCRATCH) as d:
            db = write_db(Path(d) / f"{dataset}.duckdb", dataset, tables)
            got, want = engine_and_compiler(db, t, values, order_key)
    finally:
        codes.CHUNK, bound._CHUNK_ROWS = saved
    assert got is not None, "the engine declined a supported template"
    assert_vectors_equal(got, want)
    return got


# --- health: the compiler reference test's own strategies ---------------------------------

CHUNKS = st.sampled_from([1, 3, 7, 1 << 16])


@settings(max_examples=200, deadline=None)
@given(
    spec=health_templates(),
    rows=ed_rows,
    order_key=st.binary(min_size=32, max_size=32) | st.just(ORDER_KEY),
    chunk=CHUNKS,
)
def test_health_engine_matches_compiler(
    spec: tuple[dict[str, Any], dict[str, Any]], rows: list[Ed], order_key: bytes, chunk: int
) -> None:
    d, raw = spec
    t = parse_or_skip(d)
    rows_ = {"ed_attendances": [r._asdict() for r in rows]}
    check("health", rows_, t, bind(t, raw), order_key, chunk)


# Many records per person: the per-person caps bite, and duplicates share a rank.
many_per_unit = st.lists(
    st.builds(
        Ed,
        nhs_number=st.sampled_from(("9434765919", "9434765870")),
        arrival_date=st.sampled_from([date(2022, 1, 10), date(2022, 2, 10), None]),
        age_years=st.none() | st.integers(0, 3),
        attendance_category=st.sampled_from(("1", "2", None)),
        injury=st.booleans(),
        safeguarding_concern=st.just(None),
        opted_out=st.sampled_from((False, False, False, None)),
    ),
    min_size=5,
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(spec=health_templates(), rows=many_per_unit, chunk=CHUNKS)
def test_health_many_records_per_unit(
    spec: tuple[dict[str, Any], dict[str, Any]], rows: list[Ed], chunk: int
) -> None:
    d, raw = spec
    t = parse_or_skip(d)
    check("health", {"ed_attendances": [r._asdict() for r in rows]}, t, bind(t, raw), chunk=chunk)


# --- episodes: intervals, ages and dates of birth --------------------------------------------

LEAP = [date(2020, 2, 28), date(2020, 2, 29), date(2020, 3, 1), date(2021, 2, 28)]
AROUND = [d + timedelta(days=k) for d in (date(2024, 2, 29), date(2023, 2, 28)) for k in (-1, 0, 1)]
DATES = st.sampled_from([*LEAP, *AROUND, date(2016, 2, 29), date(2019, 3, 31)]) | st.dates(
    date(2004, 1, 1), date(2025, 12, 31)
)
PLACES = ("U1", "U2", "R1", "K2", "H5", "Z1")
CHILDREN = ("A", "B", "C", "D")


@st.composite
def episodes_data(draw: st.DrawFn) -> dict[str, list[dict[str, Any]]]:
    header = []
    for child in draw(st.lists(st.sampled_from(CHILDREN), unique=True)):
        header.append(
            {"CHILD": child, "SEX": draw(st.sampled_from(("1", "2"))), "DOB": draw(DATES)}
        )
    episodes = []
    for _ in range(draw(st.integers(0, 30))):
        start = draw(DATES)
        end = draw(st.none() | DATES)
        episodes.append(
            {
                "CHILD": draw(st.sampled_from(CHILDREN)),
                "DECOM": start,
                "DEC": end,
                "PLACE": draw(st.sampled_from(PLACES)),
                "LS": "C2",
                "CIN": draw(st.sampled_from(("N1", "N2"))),
            }
        )
    return {"header": header, "episodes": episodes}


def _date_ref(draw: st.DrawFn, name: str, params: dict[str, Any], raw: dict[str, Any]) -> str:
    d = draw(DATES)
    if draw(st.booleans()):
        params[name] = {"type": "date", "min": "2000-01-01", "max": "2030-12-31", "description": ""}
        raw[name] = d.isoformat()
        return name
    return d.isoformat()


@st.composite
def episode_templates(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    params: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    filters: list[dict[str, Any]] = []
    for i in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["active_on", "age", "in", "between"]))
        if kind == "active_on":
            on = _date_ref(draw, f"on_{i}", params, raw)
            filters.append(
                {"kind": "active_on", "start_column": "DECOM", "end_column": "DEC", "on": on}
            )
        elif kind == "age":
            lo = draw(st.integers(0, 20))
            f: dict[str, Any] = {"kind": "age", "birth_column": "DOB"}
            if draw(st.booleans()):
                f["at_column"] = draw(st.sampled_from(["DECOM", "DEC"]))
            else:
                f["at"] = _date_ref(draw, f"at_{i}", params, raw)
            f.update(min=lo, max=lo + draw(st.integers(0, 10)))
            filters.append(f)
        elif kind == "in":
            codes = draw(st.lists(st.sampled_from(PLACES), min_size=1, max_size=3, unique=True))
            filters.append({"kind": "in", "column": "PLACE", "values": codes})
        else:
            a, b = _date_ref(draw, f"s_{i}", params, raw), _date_ref(draw, f"e_{i}", params, raw)
            filters.append({"kind": "between", "column": "DECOM", "start": a, "end": b})
    dims: list[dict[str, Any]] = []
    if draw(st.booleans()):
        bands = [{"label": "a", "min": -3, "max": 0}, {"label": "b", "min": 1, "max": 4}]
        bands.append({"label": "c", "min": 5, "max": draw(st.integers(5, 30))})
        dim: dict[str, Any] = {"name": "age", "kind": "bands", "birth_column": "DOB"}
        if draw(st.booleans()):
            dim["at_column"] = draw(st.sampled_from(["DECOM", "DEC"]))
        else:
            dim["at"] = _date_ref(draw, "band_at", params, raw)
        dim["bands"] = draw(st.permutations(bands))
        if draw(st.booleans()):
            dim["unknown"] = "unknown"
        dims.append(dim)
    if draw(st.booleans()):
        cat: dict[str, Any] = {
            "name": "place",
            "kind": "categories",
            "column": "PLACE",
            "categories": [
                {"label": "Fostering", "codes": ["U1", "U2"]},
                {"label": "Residential", "codes": ["K2", "R1"]},
            ],
        }
        if draw(st.booleans()):
            cat["other"] = "Other"
        dims.append(cat)
    if draw(st.booleans()):
        dims.append(
            {
                "name": "m",
                "kind": "months",
                "column": "DECOM",
                "first": "2020-01",
                "last": "2020-04",
            }
        )
    kind = draw(st.sampled_from(["count_units", "count_records"]))
    if kind == "count_units":
        stat: dict[str, Any] = {"kind": kind, "max_cells_per_unit": draw(st.integers(1, 3))}
        choose = draw(st.sampled_from([None, "latest", "earliest"]))
        if choose is not None:
            stat.update(choose=choose, by=draw(st.sampled_from(["DECOM", "DEC", "DOB"])))
    else:
        stat = {"kind": kind, "max_records_per_unit": draw(st.integers(1, 3))}
    d = template_dict(filters=filters, group_by=dims, statistic=stat, parameters=params)
    d["data"] = {
        "dataset": "ssda903",
        "schema_version": 1,
        "source": "episodes",
        "privacy_unit": "CHILD",
    }
    return d, raw


@settings(max_examples=200, deadline=None)
@given(spec=episode_templates(), data=episodes_data(), chunk=CHUNKS)
def test_episodes_engine_matches_compiler(
    spec: tuple[dict[str, Any], dict[str, Any]], data: dict[str, list[dict[str, Any]]], chunk: int
) -> None:
    d, raw = spec
    t = parse(d)
    assert to_dict(t) == d
    check("ssda903", data, t, bind(t, raw), chunk=chunk)


# --- attendance: sums and means of an integer column over a joined source -------------------


@st.composite
def attendance_case(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    pupils = [
        {"upn": u, "dob": draw(DATES), "fsm": draw(st.sampled_from((True, False, None)))}
        for u in draw(st.lists(st.sampled_from(("P1", "P2", "P3")), unique=True, min_size=1))
    ]
    rows = [
        {
            "upn": draw(st.sampled_from(("P1", "P2", "P3"))),
            "academic_year": "2023/24",
            "term": draw(st.sampled_from(("AUT", "SPR", "SUM"))),
            "sessions_possible": draw(st.integers(0, 400)),
            "sessions_missed": draw(st.integers(0, 400)),
        }
        for _ in range(draw(st.integers(0, 25)))
    ]
    lo = draw(st.integers(-50, 200))
    stat = {
        "kind": draw(st.sampled_from(["sum", "mean"])),
        "column": draw(st.sampled_from(["sessions_possible", "sessions_missed"])),
        "lower": lo,
        "upper": lo + draw(st.integers(1, 300)),
        "max_records_per_unit": draw(st.integers(1, 3)),
    }
    dims: list[dict[str, Any]] = [
        {
            "name": "missed",
            "kind": "bands",
            "column": "sessions_missed",
            "bands": [
                {"label": "few", "min": 0, "max": 20},
                {"label": "many", "min": 21, "max": 400},
            ],
        }
    ]
    filters: list[dict[str, Any]] = []
    if draw(st.booleans()):
        filters.append({"kind": "equals", "column": "fsm", "value": draw(st.booleans())})
    if draw(st.booleans()):
        filters.append(
            {"kind": "age", "birth_column": "dob", "at": "2024-02-29", "min": 5, "max": 15}
        )
    d = template_dict(filters=filters, group_by=dims[: draw(st.integers(0, 1))], statistic=stat)
    d["data"] = {
        "dataset": "education",
        "schema_version": 1,
        "source": "attendance",
        "privacy_unit": "upn",
    }
    return d, {"pupils": pupils, "attendance": rows}


@settings(max_examples=100, deadline=None)
@given(case=attendance_case())
def test_attendance_sums_match_compiler(
    case: tuple[dict[str, Any], dict[str, list[dict[str, Any]]]],
) -> None:
    d, tables = case
    t = parse(d)
    check("education", tables, t, bind(t, {}), chunk=5)


# --- completed years, date by date, against DuckDB's date_sub -----------------------------


def test_age_matches_duckdb_date_sub_around_29_february() -> None:
    days = [date(2019, 12, 25) + timedelta(days=i) for i in range(0, 900, 3)]
    days += [date(2020, 2, 29), date(2024, 2, 29), date(2021, 2, 28), date(2023, 3, 1)]
    births = np.array([(d - date(1970, 1, 1)).days for d in days], dtype=np.int32)
    parts = frames.date_parts(births)
    with duckdb.connect() as con:
        for at in [date(2020, 2, 29), date(2021, 2, 28), date(2024, 2, 28), date(2023, 3, 1)]:
            col = frames.Column("date", births, np.zeros(len(days), dtype=np.bool_))
            fr = frames.Frame(
                len(days),
                np.arange(len(days), dtype=np.int32),
                np.arange(len(days), dtype=np.int32),
                None,
                {"b": col},
                0,
            )
            fr._cache[("parts", "b")] = parts
            got, _ = execute._age(fr, "b", DateRef(fixed=at), None, {})
            want = [
                con.execute("SELECT date_sub('year', ?::DATE, ?::DATE)", [d, at]).fetchone()[0]  # type: ignore[index]
                for d in days
            ]
            assert got.tolist() == want, at


# --- the reference templates ---------------------------------------------------------------


def test_reference_template_1_on_synthetic_episodes() -> None:
    t = load_toml((EXAMPLES / "cla-by-age-and-placement.toml").read_text())
    rng = np.random.default_rng(7)  # test data only, never noise
    header = [
        {"CHILD": f"C{i}", "SEX": "1", "DOB": date(2004, 1, 1) + timedelta(days=int(d))}
        for i, d in enumerate(rng.integers(0, 7000, 300))
        if i % 10 != 0  # some children have no header row: "Age not recorded"
    ]
    episodes = []
    for i in range(300):
        for _ in range(int(rng.integers(1, 5))):
            start = date(2019, 1, 1) + timedelta(days=int(rng.integers(0, 2000)))
            end = None if rng.random() < 0.5 else start + timedelta(days=int(rng.integers(0, 900)))
            place = PLACES[int(rng.integers(0, len(PLACES)))]
            episodes.append(
                {
                    "CHILD": f"C{i}",
                    "DECOM": start,
                    "DEC": end,
                    "PLACE": place,
                    "LS": "C2",
                    "CIN": "N1",
                }
            )
    for on in ("2024-03-31", "2022-02-28", "2020-02-29"):
        got = check(
            "ssda903", {"header": header, "episodes": episodes}, t, bind(t, {"on_date": on})
        )
        assert got["count"].sum() > 0


def test_reference_template_2_on_synthetic_referrals() -> None:
    t = load_toml((EXAMPLES / "referrals-by-need-and-age.toml").read_text())
    rng = np.random.default_rng(11)
    children = [
        {"child_id": f"K{i}", "dob": date(2003, 1, 1) + timedelta(days=int(d)), "sex": "1"}
        for i, d in enumerate(rng.integers(0, 7000, 200))
    ]
    needs = [f"N{i}" for i in range(1, 10)]
    referrals = [
        {
            "child_id": f"K{int(rng.integers(0, 220))}",  # some without a child row
            "referral_date": date(2019, 6, 1) + timedelta(days=int(rng.integers(0, 800))),
            "primary_need": None if rng.random() < 0.1 else needs[int(rng.integers(0, 9))],
            "nfa": bool(rng.random() < 0.2),
        }
        for _ in range(800)
    ]
    values = bind(t, {"period_start": "2020-01-01", "period_end": "2020-12-31"})
    got = check("cin", {"children": children, "referrals": referrals}, t, values)
    assert got["count"].sum() > 0


# --- what the engine declines -------------------------------------------------------------


def test_declines_a_text_column_left_out_of_the_frame(tmp_path: Path) -> None:
    rows = [
        {
            "CHILD": "A",
            "DECOM": date(2020, 1, 1),
            "PLACE": "U1",
            "LS": "C2",
            "CIN": "N1",
            "HOME_POST": f"AB{i} 1CD",
        }
        for i in range(frames.MAX_DICTIONARY + 5)
    ]
    db = write_db(tmp_path / "s.duckdb", "ssda903", {"episodes": rows})
    with duckdb.connect(str(db), read_only=True) as con:
        frame = frames.build(con, "ssda903", "episodes", ORDER_KEY)
    assert frame is not None and "HOME_POST" not in frame.columns and "PLACE" in frame.columns
    d = template_dict(filters=[{"kind": "in", "column": "HOME_POST", "values": ["AB1 1CD"]}])
    d["data"] = {
        "dataset": "ssda903",
        "schema_version": 1,
        "source": "episodes",
        "privacy_unit": "CHILD",
    }
    t = parse(d)
    assert execute.run(frame, t, {}, exclude_opted_out=False) is None


def test_declines_a_frame_with_rank_ties(tmp_path: Path) -> None:
    rows = [Ed("9434765919", date(2022, 1, 10), 3, "1", True)._asdict()]
    db = write_db(tmp_path / "h.duckdb", "health", {"ed_attendances": rows})
    with duckdb.connect(str(db), read_only=True) as con:
        frame = frames.build(con, "health", "ed_attendances", ORDER_KEY)
    assert frame is not None and frame.ties == 0
    t = parse(template_dict())
    assert execute.run(frame, t, {}, exclude_opted_out=True) is not None
    frame.ties = 1
    assert execute.run(frame, t, {}, exclude_opted_out=True) is None


def test_tie_detection_counts_same_high_bits_with_different_content() -> None:
    # Two records of one unit whose ranks agree above the cell bits but whose cells may
    # differ: the frame cannot reproduce the compiler's order, so it counts a tie.
    r = np.array([5 << 14 | 1, 5 << 14 | 9, 7 << 14], dtype=np.uint64)
    col = np.array([0, 1, 1], dtype=np.int16)
    new_unit = np.array([True, False, False])
    assert frames.count_ties(r, new_unit, [frames.Column("code", col)]) == 1
    same = np.array([0, 0, 1], dtype=np.int16)
    assert frames.count_ties(r, new_unit, [frames.Column("code", same)]) == 0
    assert frames.count_ties(r, np.array([True, True, False]), [frames.Column("code", col)]) == 0


def test_engine_answer_falls_back_to_the_compiler(tmp_path: Path) -> None:
    """`engine.answer` gives the compiler's vectors when the engine declines."""

    class Catalog:
        def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
            self.con = con

        def connect(self, version: object) -> duckdb.DuckDBPyConnection:
            return self.con

        def frame(self, version: object, source: str, order_key: bytes) -> None:
            return None

    rows = [Ed("9434765919", date(2022, 1, 10), 3, "1", True)._asdict()] * 3
    db = write_db(tmp_path / "h.duckdb", "health", {"ed_attendances": rows})
    t = parse(template_dict(statistic={"kind": "count_records", "max_records_per_unit": 2}))
    with duckdb.connect(str(db), read_only=True) as con:
        got = engine.answer(
            Catalog(con),  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            t,
            {},
            exclude_opted_out=True,
            order_key=ORDER_KEY,
        )
    assert got["count"].tolist() == [2]


@pytest.mark.parametrize("kind", ["count_units", "count_records"])
def test_empty_source(tmp_path: Path, kind: str) -> None:
    stat = {
        "kind": kind,
        ("max_cells_per_unit" if kind == "count_units" else "max_records_per_unit"): 2,
    }
    t = parse(template_dict(statistic=stat))
    check("health", {"ed_attendances": []}, t, {})


def test_sort_orders_each_unit_by_its_full_rank() -> None:
    # Ranks that agree in all but their lowest bit share the one-sort key (two units:
    # one bit for the unit): the order must still follow the full rank.
    hu = np.array([7, 7, 3, 7], dtype=np.uint64)
    h2 = np.zeros(4, dtype=np.uint32)
    r = np.array([5, 4, 9, 2**63], dtype=np.uint64)
    got = ordering.sort_keys([hu, h2, r])
    assert got is not None
    order, new_unit, ranks = got
    assert order.tolist() == [2, 1, 0, 3]
    assert new_unit.tolist() == [True, True, False, False]
    assert ranks.tolist() == [9, 4, 5, 2**63]


def test_sort_declines_units_whose_hashes_collide() -> None:
    hu = np.array([7, 7], dtype=np.uint64)
    assert (
        ordering.sort_keys([hu, np.array([1, 2], dtype=np.uint32), np.zeros(2, np.uint64)]) is None
    )
