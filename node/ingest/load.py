"""Validating a source file, batch by batch, into a DatabaseBuilder.

Converted cells are canonical text ("" for NULL), so DuckDB can read them back
with fixed types and no guessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from tessera.schemas import Table

from .build import DatabaseBuilder
from .readers import SourceFile, iter_batches
from .report import Rejection
from .validate import Cell, ColumnConverter, HeaderMap, Reason

LISTED_REJECTIONS: Final = 1000


@dataclass
class RejectionLog:
    """Lists the first ``limit`` problems and counts the rest."""

    limit: int = LISTED_REJECTIONS
    listed: list[Rejection] = field(default_factory=list)
    not_listed: int = 0

    def add(self, rejection: Rejection) -> None:
        if len(self.listed) < self.limit:
            self.listed.append(rejection)
        else:
            self.not_listed += 1


@dataclass(frozen=True)
class FileResult:
    loaded: int
    rejected: int


def validate_file(
    src: SourceFile,
    table: Table,
    header: HeaderMap,
    now_year: int,
    builder: DatabaseBuilder,
    log: RejectionLog,
) -> FileResult:
    """Validate ``src`` against ``table`` and append its good rows through ``builder``."""
    present = [c for c in table.columns if c.name in header.positions]
    converters = [ColumnConverter(c, now_year) for c in present]
    positions = [header.positions[c.name] for c in present]
    loaded = rejected = 0

    def malformed(line: int, reason: str) -> None:
        nonlocal rejected
        rejected += 1
        log.add(Rejection(src.label, line, None, reason))

    for batch in iter_batches(src, positions, malformed):
        converted: dict[str, Sequence[Cell]] = {}
        bad: dict[int, list[tuple[str, Reason]]] = {}
        for conv, raw in zip(converters, batch.columns, strict=True):
            cells, problems = conv.convert(raw)
            converted[conv.column.name] = cells
            for i, reason in problems:
                bad.setdefault(i, []).append((conv.column.name, reason))
        keep: list[bool] | None = None
        if bad:
            keep = [i not in bad for i in range(len(batch.lines))]
            for i in sorted(bad):
                for column, reason in bad[i]:
                    log.add(Rejection(src.label, batch.lines[i], column, reason.text))
        builder.append(table, converted, keep, len(batch.lines) - len(bad))
        loaded += len(batch.lines) - len(bad)
        rejected += len(bad)
    return FileResult(loaded, rejected)
