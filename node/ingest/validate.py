"""Cell and header validation against a schema table.

Cells are converted column by column over a batch, through a per-column cache of
raw text -> result, so that the common case (a few thousand distinct codes and
dates repeated over a million rows) runs at C speed in ``map``/``dict.get``.

A converted cell is the text to load (already canonical: ISO dates, ``true`` /
``false``, decimal integers, upper-case codes) with ``""`` for NULL, or a
:class:`Reason`. Reasons never carry the offending value: record-level values
must not leave the node, not even inside an error message.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import ne
from typing import Final

from tessera.schemas import Column, ColumnType, Table

from .dates import ISO, parse_date_form


class Reason:
    """Why a cell was rejected. Singletons, compared by identity."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Reason({self.text!r})"


UNKNOWN_CODE: Final = Reason("unknown code")
UNREADABLE_DATE: Final = Reason("unreadable date")
REQUIRED_MISSING: Final = Reason("required value missing")
NOT_AN_INTEGER: Final = Reason("not an integer")
OUT_OF_RANGE: Final = Reason("out of range")
NOT_A_BOOLEAN: Final = Reason("not a yes/no value")
UNREADABLE_YEAR: Final = Reason("unreadable return year")

# A converted cell: canonical text to load ("" is NULL), or why the cell is bad.
Cell = str | Reason

# Bounded so that a file of unique garbage cannot grow a cache without limit;
# real columns (codes, dates, small integers) fit easily.
_CACHE_LIMIT: Final = 1 << 17
_MISS: Final = Reason("cache miss")  # never leaves this module

_INT = re.compile(r"[+-]?(\d+)(?:\.0*)?", re.ASCII)
_INT64_DIGITS: Final = 18  # any 18-digit integer fits in BIGINT
_TRUE: Final = frozenset({"1", "true", "y", "yes"})
_FALSE: Final = frozenset({"0", "false", "n", "no"})


# Normalisations, as counted in the ingest report (a cell may have several).
SPACES: Final = "surrounding spaces removed"
LOWER_CASE: Final = "code in lower case, read in upper case"
DECIMAL: Final = "whole number written as a decimal (1.0 read as 1)"

_DECIMAL = re.compile(r"([+-]?\d+)\.0+", re.ASCII)
_YEAR = re.compile(r"(\d{4})(?:\.0+)?|(\d{4})\s*[/-]\s*(\d{2}|\d{4})", re.ASCII)

Kinds = tuple[str, ...]
_NONE: Final[Kinds] = ()


def _spaces(raw: str, s: str) -> list[str]:
    return [SPACES] if s != raw else []


def _code_converter(column: Column) -> Callable[[str], tuple[Cell, Kinds]]:
    codes = frozenset(column.codes)

    def convert(raw: str) -> tuple[Cell, Kinds]:
        stripped = raw.strip()
        kinds = _spaces(raw, stripped)
        s = stripped.upper()
        if s != stripped:
            kinds.append(LOWER_CASE)
        if not s or s in codes:
            return s, tuple(kinds)
        m = _DECIMAL.fullmatch(s)
        if m is not None and m[1] in codes:
            kinds.append(DECIMAL)
            return m[1], tuple(kinds)
        return UNKNOWN_CODE, _NONE

    return convert


def _date_converter(now_year: int) -> Callable[[str], tuple[Cell, Kinds]]:
    def convert(raw: str) -> tuple[Cell, Kinds]:
        s = raw.strip()
        if not s:
            return "", _NONE
        parsed = parse_date_form(s, now_year)
        if parsed is None:
            return UNREADABLE_DATE, _NONE
        d, form = parsed
        kinds = _spaces(raw, s)
        if form != ISO:
            kinds.append("date written " + form)
        return d.isoformat(), tuple(kinds)

    return convert


def _int_converter(column: Column) -> Callable[[str], tuple[Cell, Kinds]]:
    lo, hi = column.min, column.max

    def convert(raw: str) -> tuple[Cell, Kinds]:
        s = raw.strip()
        if not s:
            return "", _NONE
        m = _INT.fullmatch(s)
        if m is None:
            return NOT_AN_INTEGER, _NONE
        if len(m[1]) > _INT64_DIGITS:
            return OUT_OF_RANGE, _NONE
        value = int(s.partition(".")[0])  # "12.0" from a float-typed export is 12
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return OUT_OF_RANGE, _NONE
        kinds = _spaces(raw, s)
        if "." in s:
            kinds.append(DECIMAL)
        return str(value), tuple(kinds)

    return convert


def _bool_converter(raw: str) -> tuple[Cell, Kinds]:
    s = raw.strip().lower()
    if not s:
        return "", _NONE
    m = _DECIMAL.fullmatch(s)
    kinds = _spaces(raw, raw.strip())
    if m is not None:
        s = m[1]
        kinds.append(DECIMAL)
    if s in _TRUE:
        return "true", tuple(kinds)
    if s in _FALSE:
        return "false", tuple(kinds)
    return NOT_A_BOOLEAN, _NONE


def year_converter(raw: str) -> tuple[Cell, Kinds]:
    """A return's collection year: ``2021``, ``2021.0``, ``2020/21`` or ``2020-2021``
    (the year the collection ends), or blank."""
    s = raw.strip()
    if not s:
        return "", _NONE
    m = _YEAR.fullmatch(s)
    if m is None:
        return UNREADABLE_YEAR, _NONE
    kinds = _spaces(raw, s)
    if m[1] is not None:
        year = int(m[1])
        if "." in s:
            kinds.append(DECIMAL)
    else:
        first, second = int(m[2]), m[3]
        year = int(second) if len(second) == 4 else first - first % 100 + int(second)
        if year < first:
            year += 100
        if year != first + 1:
            return UNREADABLE_YEAR, _NONE
        kinds.append("return year written as a span (2020/21 read as 2021)")
    if not 1990 <= year <= 2100:
        return UNREADABLE_YEAR, _NONE
    return str(year), tuple(kinds)


class ColumnConverter:
    """Converts one column of a batch, reports which cells are bad, and counts
    the normalisations it made (``normalised``: kind -> cells)."""

    def __init__(
        self,
        column: Column,
        now_year: int,
        one: Callable[[str], tuple[Cell, Kinds]] | None = None,
    ) -> None:
        self.column = column
        self._text = column.type is ColumnType.TEXT and one is None
        # Valid and invalid results are cached apart, so that in the common case
        # (a batch with no bad cell) nothing but C code touches the cells.
        self._good: dict[str, str] = {}
        self._bad: dict[str, Reason] = {}
        self._kinds: dict[str, Kinds] = {}  # raw text -> normalisations, when any
        self.normalised: Counter[str] = Counter()
        self._one: Callable[[str], tuple[Cell, Kinds]]
        if one is not None:
            self._one = one
        elif column.type is ColumnType.CODE:
            self._one = _code_converter(column)
        elif column.type is ColumnType.DATE:
            self._one = _date_converter(now_year)
        elif column.type is ColumnType.INT:
            self._one = _int_converter(column)
        elif column.type is ColumnType.BOOL:
            self._one = _bool_converter
        else:
            self._one = lambda raw: (raw.strip(), _NONE)

    def convert(self, raw: Sequence[str]) -> tuple[list[Cell], list[tuple[int, Reason]]]:
        """Converted cells, and (row index, reason) for every bad cell."""
        bad: list[tuple[int, Reason]] = []
        out: list[Cell]
        if self._text:
            out = list(map(str.strip, raw))  # free text cannot be malformed
            spaced = sum(map(ne, raw, out))
            if spaced:
                self.normalised[SPACES] += spaced
        else:
            good = self._good
            out = list(map(good.get, raw, repeat(_MISS)))
            if _MISS in out:
                self._fill_misses(raw, out, bad)
            if self._kinds:
                kinds = self._kinds
                for value, n in Counter(raw).items():
                    for kind in kinds.get(value, _NONE):
                        self.normalised[kind] += n
        if self.column.required and "" in out:
            bad += [(i, REQUIRED_MISSING) for i, v in enumerate(out) if v == ""]
        return out, bad

    def _fill_misses(
        self, raw: Sequence[str], out: list[Cell], bad: list[tuple[int, Reason]]
    ) -> None:
        good, known_bad, one = self._good, self._bad, self._one
        for i, v in enumerate(out):
            if v is not _MISS:
                continue
            key = raw[i]
            cell: Cell | None = known_bad.get(key) or good.get(key)
            if cell is None:
                cell, kinds = one(key)
                if isinstance(cell, Reason):
                    if len(known_bad) < _CACHE_LIMIT:
                        known_bad[key] = cell
                elif len(good) < _CACHE_LIMIT:
                    good[key] = cell
                    if kinds:
                        self._kinds[key] = kinds
                elif kinds:  # past the cache limit: count this cell here
                    for kind in kinds:
                        self.normalised[kind] += 1
            out[i] = cell
            if isinstance(cell, Reason):
                bad.append((i, cell))


# Header names we are willing to echo back in a report. Anything else might be a
# data row mistaken for a header, so it is shown by position only.
_SHOWABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]{0,39}", re.ASCII)


def header_key(name: str) -> str:
    return "".join(name.replace("\ufeff", "").split()).casefold()


def describe_column(name: str, position: int) -> str:
    shown = name.strip()
    if _SHOWABLE_NAME.fullmatch(shown):
        return shown
    return f"column {position + 1} (name not shown)"


@dataclass
class HeaderMap:
    """Where each schema column sits in a file, and what else the file has."""

    positions: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Ingest-only columns (the return year) found in the file: name -> position.
    extra: dict[str, int] = field(default_factory=dict)


# Ingest-only columns read from any file that has them: header key -> name.
RETURN_YEAR: Final = "YEAR"
EXTRA_COLUMNS: Final = {
    "year": RETURN_YEAR,
    "collection_year": RETURN_YEAR,
    "collectionyear": RETURN_YEAR,
}


def map_header(table: Table, header: Sequence[str]) -> HeaderMap:
    by_key = {header_key(c.name): c.name for c in table.columns}
    result = HeaderMap()
    for position, name in enumerate(header):
        key = header_key(name)
        target = by_key.get(key)
        extra = EXTRA_COLUMNS.get(key) if target is None else None
        if extra is not None:
            if extra in result.extra:
                result.problems.append(f"column {extra} appears more than once")
            result.extra[extra] = position
        elif target is None:
            result.ignored.append(describe_column(name, position))
        elif target in result.positions:
            result.problems.append(f"column {target} appears more than once")
        else:
            result.positions[target] = position
    missing = [c.name for c in table.columns if c.required and c.name not in result.positions]
    if missing:
        result.problems.append("missing required column(s): " + ", ".join(missing))
        # The "header" may really be a data row; do not list its cells anywhere.
        result.ignored = []
    result.absent = [c.name for c in table.columns if c.name not in result.positions]
    return result
