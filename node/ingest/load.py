"""Validating a source, batch by batch, into a DatabaseBuilder.

Converted cells are canonical text ("" for NULL), so DuckDB can cast them with
fixed types and no guessing. Besides the counts, a file's result keeps the set
of units (children) that had a row refused, in memory only, so that the report
can say what refusing them removed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from tessera.schemas import Column, ColumnType, Table

from .build import DatabaseBuilder
from .readers import SourceFile, iter_batches
from .report import Rejection
from .validate import RETURN_YEAR, Cell, ColumnConverter, HeaderMap, Reason, year_converter

LISTED_REJECTIONS: Final = 1000
_YEAR_COLUMN: Final = Column(RETURN_YEAR, ColumnType.INT)


@dataclass
class RejectionLog:
    """Lists the first ``limit`` problems and counts the rest; counts every
    problem by (table, column, reason) as well."""

    limit: int = LISTED_REJECTIONS
    listed: list[Rejection] = field(default_factory=list)
    not_listed: int = 0
    by_reason: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def add(self, table: str, rejection: Rejection) -> None:
        self.by_reason[(table, rejection.column or "(row)", rejection.reason)] += 1
        if len(self.listed) < self.limit:
            self.listed.append(rejection)
        else:
            self.not_listed += 1


@dataclass
class FileResult:
    loaded: int = 0
    rejected: int = 0
    normalised: Counter[tuple[str, str]] = field(default_factory=Counter)  # (column, kind)
    refused_units: set[str] = field(default_factory=set)  # held in memory, never shown


def validate_file(
    src: SourceFile,
    table: Table,
    header: HeaderMap,
    now_year: int,
    builder: DatabaseBuilder,
    log: RejectionLog,
    *,
    unit: str,
    file_index: int,
) -> FileResult:
    """Validate ``src`` against ``table`` and stage its good rows through ``builder``."""
    present = [c for c in table.columns if c.name in header.positions]
    converters = [ColumnConverter(c, now_year) for c in present]
    positions = [header.positions[c.name] for c in present]
    year_conv: ColumnConverter | None = None
    if RETURN_YEAR in header.extra:
        year_conv = ColumnConverter(_YEAR_COLUMN, now_year, year_converter)
        positions.append(header.extra[RETURN_YEAR])
    unit_at = [c.name for c in present].index(unit) if unit in header.positions else None
    result = FileResult()

    def malformed(line: int, reason: str) -> None:
        result.rejected += 1
        log.add(table.name, Rejection(src.label, line, None, reason))

    for batch in iter_batches(src, positions, malformed):
        converted: dict[str, Sequence[Cell]] = {}
        bad: dict[int, list[tuple[str, Reason]]] = {}
        for conv, raw in zip(converters, batch.columns, strict=False):
            cells, problems = conv.convert(raw)
            converted[conv.column.name] = cells
            for i, reason in problems:
                bad.setdefault(i, []).append((conv.column.name, reason))
        years: Sequence[Cell] | None = None
        if year_conv is not None:
            years, problems = year_conv.convert(batch.columns[-1])
            for i, reason in problems:
                bad.setdefault(i, []).append((RETURN_YEAR, reason))
        keep: list[bool] | None = None
        if bad:
            keep = [i not in bad for i in range(len(batch.lines))]
            for i in sorted(bad):
                for column, reason in bad[i]:
                    log.add(table.name, Rejection(src.label, batch.lines[i], column, reason.text))
            if unit_at is not None:
                units = batch.columns[unit_at]
                result.refused_units.update(units[i].strip() for i in bad)
        good = len(batch.lines) - len(bad)
        builder.append(
            table,
            converted,
            keep,
            good,
            year=years,
            file_index=file_index,
        )
        result.loaded += good
        result.rejected += len(bad)
    for conv in converters:
        for kind, n in conv.normalised.items():
            result.normalised[(conv.column.name, kind)] += n
    if year_conv is not None:
        for kind, n in year_conv.normalised.items():
            result.normalised[(RETURN_YEAR, kind)] += n
    return result
