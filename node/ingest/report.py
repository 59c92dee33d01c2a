"""What an ingest did, in a form safe to show anyone: counts, line numbers,
column names, rule codes and reasons, never a cell value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rejection:
    file: str
    line: int  # physical CSV line (header = 1), 1-based Parquet row, or XML <Child> number
    column: str | None  # None when the whole row is unreadable
    reason: str


@dataclass(frozen=True)
class TableCounts:
    rows_loaded: int  # rows in the published table, after reconciliation
    rows_rejected: int  # rows refused at validation
    duplicates_dropped: int = 0  # copies dropped by reconciliation


@dataclass(frozen=True)
class RuleCount:
    code: str  # DfE rule number, or a TES- code
    table: str
    message: str
    failures: int


@dataclass(frozen=True)
class RefusalImpact:
    """What refusing rows of one table removed."""

    table: str
    rows: int
    children: int  # distinct children (units) with a refused row
    children_left_without_rows: int  # of those, how many have no row left in the table


def _is_parquet(label: str) -> bool:
    return label.lower().endswith((".parquet", ".pq"))


def _where(label: str, line: int) -> str:
    if _is_parquet(label):
        return f"row {line}"
    if label.lower().endswith(".xml"):
        return f"child {line}"
    return f"line {line}"


@dataclass
class IngestReport:
    dataset: str
    version: int  # the version written, or the latest one when unchanged
    content_sha256: str
    tables: dict[str, TableCounts]
    rejections: list[Rejection] = field(default_factory=list)
    # Rejections beyond the listing limit are counted in ``tables`` but not listed.
    rejections_not_listed: int = 0
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    # Optional schema columns a file did not have; loaded as NULL.
    absent_columns: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # "written", "unchanged", "dry run" or "refused".
    outcome: str = "written"
    rows_read: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, dict[str, int]] = field(default_factory=dict)  # table -> rule -> rows
    conflicts: list[tuple[str, str, str, int]] = field(default_factory=list)  # table, col, code, n
    children_without_header: dict[str, int] = field(default_factory=dict)
    normalisations: list[tuple[str, str, str, int]] = field(default_factory=list)  # t, col, kind
    refusals_by_reason: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    refusal_impact: list[RefusalImpact] = field(default_factory=list)
    rules: list[RuleCount] = field(default_factory=list)
    refused_share: float = 0.0
    max_refused_share: float = 0.05
    problems: list[str] = field(default_factory=list)  # why nothing was published

    @property
    def rows_loaded(self) -> int:
        return sum(t.rows_loaded for t in self.tables.values())

    @property
    def rows_rejected(self) -> int:
        return sum(t.rows_rejected for t in self.tables.values())

    def _headline(self) -> str:
        if self.outcome == "written":
            return f"Dataset {self.dataset}: version {self.version} written"
        if self.outcome == "unchanged":
            return (
                f"Dataset {self.dataset}: unchanged: same content as version {self.version}; "
                "nothing new published"
            )
        if self.outcome == "dry run":
            return f"Dataset {self.dataset}: dry run, nothing published"
        return f"Dataset {self.dataset}: REFUSED, nothing published"

    def render(self) -> str:
        out = [self._headline(), f"  content sha256 {self.content_sha256}"]
        out += [f"  {p}" for p in self.problems]
        out += [
            f"  rows refused: {self.refused_share:.2%} of rows read "
            f"(threshold {self.max_refused_share:.2%})",
            "",
            "Tables:",
        ]
        width = max((len(name) for name in self.tables), default=0)
        for name, counts in self.tables.items():
            out.append(
                f"  {name:<{width}}  {self.rows_read.get(name, 0):>9,} read  "
                f"{counts.rows_rejected:>7,} rejected  "
                f"{counts.duplicates_dropped:>7,} duplicates dropped  "
                f"{counts.rows_loaded:>9,} loaded"
            )
        dup_lines = [
            f"  {table}: {n:,} {rule}"
            for table, rules in self.duplicates.items()
            for rule, n in sorted(rules.items())
            if n
        ]
        if dup_lines:
            out += ["", "Duplicates dropped (reconciliation of stacked returns):", *dup_lines]
        if self.conflicts:
            out += ["", "Conflicts between returns (the latest return's value kept):"]
            out += [
                f"  {t}.{c}: {n:,} children with differing values (rule {code})"
                for t, c, code, n in self.conflicts
            ]
        if any(self.children_without_header.values()):
            out += ["", "Children without a header row (header fields such as DOB unknown):"]
            out += [f"  {t}: {n:,} children" for t, n in self.children_without_header.items()]
        if self.normalisations:
            out += ["", "Normalisations (cells read in a tolerated form):"]
            out += [f"  {t}.{c}: {n:,} {kind}" for t, c, kind, n in self.normalisations]
        if self.refusals_by_reason:
            out += ["", "Refusals by reason:"]
            out += [
                f"  {t}.{c}: {n:,} {reason}" + (f" (rule {code})" if code else "")
                for t, c, reason, code, n in self.refusals_by_reason
            ]
        if self.refusal_impact:
            out += ["", "What refusing rows removed:"]
            out += [
                f"  {r.table}: {r.rows:,} rows of {r.children:,} children; "
                f"{r.children_left_without_rows:,} of them have no {r.table} row left"
                for r in self.refusal_impact
            ]
        if self.rules:
            out += ["", "Validation rules (rows failing; kept, but fix them at source):"]
            out += [f"  {r.code:<10} {r.table}: {r.failures:>7,}  {r.message}" for r in self.rules]
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
                column = f"{r.column}: " if r.column else ""
                out.append(f"    {_where(r.file, r.line)}: {column}{r.reason}")
            if self.rejections_not_listed:
                out.append(f"  ... and {self.rejections_not_listed:,} more problems not listed")
        return "\n".join(out) + "\n"


class IngestError(Exception):
    """Nothing was written. ``problems`` says why, without quoting file content;
    ``report`` is the whole report when the files were read but refused."""

    def __init__(self, problems: Sequence[str] | str, report: IngestReport | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.report = report
        super().__init__("ingest failed: " + "; ".join(self.problems))
