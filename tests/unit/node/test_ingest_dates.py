"""The date parser: every accepted format round-trips, impossible dates and
garbage are refused, and nothing ever raises."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.node.ingest.dates import expand_two_digit_year, parse_date
from tessera.node.ingest.validate import REQUIRED_MISSING, ColumnConverter, Reason
from tessera.schemas import Column, ColumnType

NOW_YEAR = 2026
any_date = st.dates(min_value=date(1000, 1, 1), max_value=date(9999, 12, 31))
# Two-digit years can only name the century that ends at NOW_YEAR.
pivot_window = st.dates(min_value=date(NOW_YEAR - 99, 1, 1), max_value=date(NOW_YEAR, 12, 31))
padding = st.sampled_from(["", " ", "  ", "\t"])
time_suffix = st.sampled_from(["", " 00:00", " 00:00:00", "T00:00:00", " 13:45:07.123"])


def iso(d: date) -> str:
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


def dmy(d: date) -> str:
    return f"{d.day:02d}/{d.month:02d}/{d.year:04d}"


def dmy_unpadded(d: date) -> str:
    return f"{d.day}/{d.month}/{d.year}"


def dmy_short(d: date) -> str:
    return f"{d.day:02d}/{d.month:02d}/{d.year % 100:02d}"


@settings(max_examples=300)
@given(d=any_date, fmt=st.sampled_from([iso, dmy, dmy_unpadded]), pad=padding, t=time_suffix)
def test_four_digit_year_formats_round_trip(d: date, fmt: object, pad: str, t: str) -> None:
    assert callable(fmt)
    assert parse_date(pad + fmt(d) + t + pad, NOW_YEAR) == d


@settings(max_examples=300)
@given(d=pivot_window, sep=st.sampled_from(["/", "-", "."]), pad=padding)
def test_two_digit_years_round_trip_within_the_pivot_window(d: date, sep: str, pad: str) -> None:
    text = dmy_short(d).replace("/", sep)
    assert parse_date(pad + text + pad, NOW_YEAR) == d


@settings(max_examples=200)
@given(yy=st.integers(0, 99), now_year=st.integers(1950, 2150))
def test_two_digit_year_is_never_in_the_future(yy: int, now_year: int) -> None:
    year = expand_two_digit_year(yy, now_year)
    assert year % 100 == yy
    assert now_year - 100 < year <= now_year


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("05/03/26", date(2026, 3, 5)),
        ("05/03/27", date(1927, 3, 5)),
        ("05/03/00", date(2000, 3, 5)),
        ("29/02/2020", date(2020, 2, 29)),
        ("1/2/2003", date(2003, 2, 1)),
        ("2003-2-1", date(2003, 2, 1)),
        ("01-02-2003", date(2003, 2, 1)),
        ("01.02.2003", date(2003, 2, 1)),
        ("01/02/2003 00:00", date(2003, 2, 1)),
        ("43831", date(2020, 1, 1)),  # an Excel serial number
        ("43831.0", date(2020, 1, 1)),
    ],
)
def test_known_dates(text: str, expected: date) -> None:
    assert parse_date(text, NOW_YEAR) == expected


@pytest.mark.parametrize(
    "text",
    [
        "31/02/2020",  # no such day
        "29/02/2021",
        "00/01/2020",
        "01/13/2020",
        "2020-13-01",
        "0000-01-01",
        "01/02-2020",  # mixed separators
        "01/02/020",
        "2020/01/02",
        "20200102",
        "123",  # an Excel serial number before 1901
        "73416",  # an Excel serial number after 2099
        "١٢/٠٣/٢٠٢٠",  # non-ASCII digits
        "01/02/2020 junk",
        "",
        "   ",
        "not a date",
    ],
)
def test_unreadable_dates(text: str) -> None:
    assert parse_date(text, NOW_YEAR) is None


@settings(max_examples=500)
@given(st.text())
def test_garbage_never_raises(text: str) -> None:
    result = parse_date(text, NOW_YEAR)
    assert result is None or isinstance(result, date)


@settings(max_examples=500)
@given(st.lists(st.text(), max_size=20))
def test_garbage_in_a_date_column_is_only_ever_a_rejection(cells: list[str]) -> None:
    conv = ColumnConverter(Column("d", ColumnType.DATE, required=True), NOW_YEAR)
    out, bad = conv.convert(cells)
    assert len(out) == len(cells)
    bad_rows = dict(bad)
    for i, cell in enumerate(out):
        if i in bad_rows:
            assert isinstance(bad_rows[i], Reason)
            assert isinstance(cell, Reason) or (cell == "" and bad_rows[i] is REQUIRED_MISSING)
        else:  # anything accepted is a canonical ISO date
            assert isinstance(cell, str)
            assert date.fromisoformat(cell).isoformat() == cell
