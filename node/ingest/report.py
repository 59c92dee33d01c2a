"""What an ingest did, in a form safe to show anyone: counts, line numbers,
column names and reasons, never a cell value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class IngestError(Exception):
    """Nothing was written. ``problems`` says why, without quoting file content."""

    def __init__(self, problems: Sequence[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("ingest failed: " + "; ".join(self.problems))


@dataclass(frozen=True)
class Rejection:
    file: str
    line: int  # physical CSV line (header = 1), or 1-based Parquet row
    column: str | None  # None when the whole row is unreadable
    reason: str


@dataclass(frozen=True)
class TableCounts:
    rows_loaded: int
    rows_rejected: int


def _is_parquet(label: str) -> bool:
    return label.lower().endswith((".parquet", ".pq"))


@dataclass
class IngestReport:
    dataset: str
    version: int
    content_sha256: str
    tables: dict[str, TableCounts]
    rejections: list[Rejection] = field(default_factory=list)
    # Rejections beyond the listing limit are counted in ``tables`` but not listed.
    rejections_not_listed: int = 0
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    # Optional schema columns a file did not have; loaded as NULL.
    absent_columns: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def rows_loaded(self) -> int:
        return sum(t.rows_loaded for t in self.tables.values())

    @property
    def rows_rejected(self) -> int:
        return sum(t.rows_rejected for t in self.tables.values())

    def render(self) -> str:
        out = [
            f"Dataset {self.dataset}: version {self.version} written",
            f"  content sha256 {self.content_sha256}",
            "",
            "Tables:",
        ]
        width = max((len(name) for name in self.tables), default=0)
        for name, counts in self.tables.items():
            out.append(
                f"  {name:<{width}}  {counts.rows_loaded:>9,} loaded  "
                f"{counts.rows_rejected:>7,} rejected"
            )
        if self.ignored_columns:
            out += ["", "Ignored columns:"]
            out += [f"  {f}: {', '.join(cols)}" for f, cols in self.ignored_columns.items()]
        if self.absent_columns:
            out += ["", "Columns not in the file (loaded as empty):"]
            out += [f"  {f}: {', '.join(cols)}" for f, cols in self.absent_columns.items()]
        if self.notes:
            out += ["", "Notes:"] + [f"  {n}" for n in self.notes]
        if self.rejections:
            out += ["", "Rejected rows (CSV lines count the header as line 1):"]
            current = None
            for r in self.rejections:
                if r.file != current:
                    current = r.file
                    out.append(f"  {r.file}")
                where = f"row {r.line}" if _is_parquet(r.file) else f"line {r.line}"
                column = f"{r.column}: " if r.column else ""
                out.append(f"    {where}: {column}{r.reason}")
            if self.rejections_not_listed:
                out.append(f"  ... and {self.rejections_not_listed:,} more problems not listed")
        return "\n".join(out) + "\n"
