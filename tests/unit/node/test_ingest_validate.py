"""Cell conversion and header matching, below the file level."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.node.ingest.validate import (
    NOT_A_BOOLEAN,
    NOT_AN_INTEGER,
    OUT_OF_RANGE,
    REQUIRED_MISSING,
    UNKNOWN_CODE,
    ColumnConverter,
    Reason,
    map_header,
)
from tessera.schemas import DATASETS, Column, ColumnType

EPISODES = DATASETS["ssda903"].table("episodes")
assert EPISODES is not None


def convert(column: Column, cells: list[str]) -> tuple[list[object], dict[int, Reason]]:
    out, bad = ColumnConverter(column, 2026).convert(cells)
    return list(out), dict(bad)


def test_codes_are_stripped_and_upper_cased() -> None:
    col = Column("PLACE", ColumnType.CODE, codes=("U1", "K2"))
    out, bad = convert(col, [" u1 ", "K2", "k2\t", "", "U9", "u1"])
    assert out[:4] == ["U1", "K2", "K2", ""]
    assert bad == {4: UNKNOWN_CODE}


def test_required_blank_is_missing_for_every_type() -> None:
    for type_ in ColumnType:
        col = Column("x", type_, required=True, codes=("A",))
        _, bad = convert(col, ["  ", ""])
        assert bad == {0: REQUIRED_MISSING, 1: REQUIRED_MISSING}, type_


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("12", "12"),
        (" +7 ", "7"),
        ("-0", "0"),
        ("12.0", "12"),
        ("400", "400"),
        ("401", OUT_OF_RANGE),
        ("-1", OUT_OF_RANGE),
        ("12.5", NOT_AN_INTEGER),
        ("1e3", NOT_AN_INTEGER),
        ("twelve", NOT_AN_INTEGER),
        ("1 000", NOT_AN_INTEGER),
        ("9" * 40, OUT_OF_RANGE),
    ],
)
def test_integers(raw: str, expected: object) -> None:
    col = Column("n", ColumnType.INT, min=0, max=400)
    out, bad = convert(col, [raw])
    assert (bad.get(0) if bad else out[0]) == expected


def test_unbounded_integers_must_still_fit_bigint() -> None:
    col = Column("n", ColumnType.INT)
    out, bad = convert(col, ["9" * 18, "9" * 19])
    assert out[0] == "9" * 18
    assert bad == {1: OUT_OF_RANGE}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", "true"),
        ("Yes", "true"),
        ("Y", "true"),
        ("TRUE", "true"),
        ("0", "false"),
        ("no", "false"),
        ("n", "false"),
        ("False", "false"),
        ("", ""),
        ("2", NOT_A_BOOLEAN),
        ("maybe", NOT_A_BOOLEAN),
    ],
)
def test_booleans(raw: str, expected: object) -> None:
    out, bad = convert(Column("b", ColumnType.BOOL), [raw])
    assert (bad.get(0) if bad else out[0]) == expected


def test_text_is_stripped_not_otherwise_touched() -> None:
    out, bad = convert(Column("t", ColumnType.TEXT), ["  Ab c ", 'x,"y"\nz', ""])
    assert out == ["Ab c", 'x,"y"\nz', ""]
    assert bad == {}


def test_repeated_bad_values_are_all_reported() -> None:
    # The second batch hits the caches: the bad value must still be caught.
    conv = ColumnConverter(Column("c", ColumnType.CODE, codes=("A",)), 2026)
    for _ in range(2):
        _, bad = conv.convert(["a", "zz", "A", "zz"])
        assert bad == [(1, UNKNOWN_CODE), (3, UNKNOWN_CODE)]


@settings(max_examples=300)
@given(st.lists(st.text(), max_size=20), st.sampled_from(list(ColumnType)))
def test_garbage_never_raises_in_any_column_type(cells: list[str], type_: ColumnType) -> None:
    col = Column("x", type_, codes=("A", "B"), min=0, max=10)
    out, bad = ColumnConverter(col, 2026).convert(cells)
    assert len(out) == len(cells)
    assert all(isinstance(r, Reason) for _, r in bad)


def test_headers_match_ignoring_case_and_spaces() -> None:
    assert EPISODES is not None
    header = [" child ", "Decom", "L S", "cin", "PLACE", "la", "YEAR", ""]
    m = map_header(EPISODES, header)
    assert m.positions == {"CHILD": 0, "DECOM": 1, "LS": 2, "CIN": 3, "PLACE": 4}
    assert m.ignored == ["la", "column 8 (name not shown)"]
    assert m.extra == {"YEAR": 6}
    assert map_header(EPISODES, ["CHILD", "DECOM", "Collection_Year"]).extra == {"YEAR": 2}
    assert m.problems == []
    assert "DEC" in m.absent and "CHILD" not in m.absent


def test_missing_required_column_is_a_problem() -> None:
    assert EPISODES is not None
    m = map_header(EPISODES, ["CHILD", "DECOM", "LS"])
    assert m.problems == ["missing required column(s): CIN, PLACE"]


def test_duplicate_column_is_a_problem() -> None:
    assert EPISODES is not None
    m = map_header(EPISODES, ["CHILD", "DECOM", "LS", "CIN", "PLACE", "place "])
    assert m.problems == ["column PLACE appears more than once"]


def test_a_data_row_taken_for_a_header_is_never_echoed() -> None:
    # No header line: the first data row is read as one. Its cells must not be
    # listed as "ignored columns" anywhere.
    assert EPISODES is not None
    m = map_header(EPISODES, ["SECRETKID42", "01/04/2020", "S", "C2", "N1", "U1"])
    assert m.ignored == []
    assert "SECRETKID42" not in " ".join(m.problems)
