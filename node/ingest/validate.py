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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Final

from tessera.schemas import Column, ColumnType, Table

from .dates import parse_date


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


def _code_converter(column: Column) -> Callable[[str], Cell]:
    codes = frozenset(column.codes)

    def convert(raw: str) -> Cell:
        s = raw.strip().upper()
        return s if not s or s in codes else UNKNOWN_CODE

    return convert


def _date_converter(now_year: int) -> Callable[[str], Cell]:
    def convert(raw: str) -> Cell:
        s = raw.strip()
        if not s:
            return ""
        d = parse_date(s, now_year)
        return UNREADABLE_DATE if d is None else d.isoformat()

    return convert


def _int_converter(column: Column) -> Callable[[str], Cell]:
    lo, hi = column.min, column.max

    def convert(raw: str) -> Cell:
        s = raw.strip()
        if not s:
            return ""
        m = _INT.fullmatch(s)
        if m is None:
            return NOT_AN_INTEGER
        if len(m[1]) > _INT64_DIGITS:
            return OUT_OF_RANGE
        value = int(s.partition(".")[0])  # "12.0" from a float-typed export is 12
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return OUT_OF_RANGE
        return str(value)

    return convert


def _bool_converter(raw: str) -> Cell:
    s = raw.strip().lower()
    if not s:
        return ""
    if s in _TRUE:
        return "true"
    if s in _FALSE:
        return "false"
    return NOT_A_BOOLEAN


def _text_converter(raw: str) -> Cell:
    return raw.strip()


class ColumnConverter:
    """Converts one column of a batch and reports which cells are bad."""

    def __init__(self, column: Column, now_year: int) -> None:
        self.column = column
        self._text = column.type is ColumnType.TEXT
        # Valid and invalid results are cached apart, so that in the common case
        # (a batch with no bad cell) nothing but C code touches the cells.
        self._good: dict[str, str] = {}
        self._bad: dict[str, Reason] = {}
        self._one: Callable[[str], Cell]
        if column.type is ColumnType.CODE:
            self._one = _code_converter(column)
        elif column.type is ColumnType.DATE:
            self._one = _date_converter(now_year)
        elif column.type is ColumnType.INT:
            self._one = _int_converter(column)
        elif column.type is ColumnType.BOOL:
            self._one = _bool_converter
        else:
            self._one = _text_converter

    def convert(self, raw: Sequence[str]) -> tuple[list[Cell], list[tuple[int, Reason]]]:
        """Converted cells, and (row index, reason) for every bad cell."""
        bad: list[tuple[int, Reason]] = []
        out: list[Cell]
        if self._text:
            out = list(map(str.strip, raw))  # free text cannot be malformed
        else:
            good = self._good
            out = list(map(good.get, raw, repeat(_MISS)))
            if _MISS in out:
                self._fill_misses(raw, out, bad)
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
            cell: Cell | None = known_bad.get(key)
            if cell is None:
                cell = one(key)
                if isinstance(cell, Reason):
                    if len(known_bad) < _CACHE_LIMIT:
                        known_bad[key] = cell
                elif len(good) < _CACHE_LIMIT:
                    good[key] = cell
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


def map_header(table: Table, header: Sequence[str]) -> HeaderMap:
    by_key = {header_key(c.name): c.name for c in table.columns}
    result = HeaderMap()
    for position, name in enumerate(header):
        target = by_key.get(header_key(name))
        if target is None:
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
