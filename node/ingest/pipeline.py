"""``ingest_dataset``: source files in, one new immutable dataset version out.

Files are validated row by row into an in-memory DuckDB database (nothing
record-level is written to disk while building), stacked returns are reconciled
(reconcile.py), validation rules are counted (rules.py), and the finished
connection is handed to :func:`manifest.publish`. A version whose reconciled
content equals the latest published version's is not published again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

from tessera.clock import isoformat
from tessera.node.vault import DataKey
from tessera.schemas import Dataset

from .build import DatabaseBuilder
from .census import CENSUS, split_census
from .load import FileResult, RejectionLog, validate_file
from .manifest import (
    DATASET_NAME,
    Manifest,
    ingest_lock,
    latest_manifest,
    next_version,
    publish,
    remove_leftovers,
    table_content_sha256,
)
from .readers import FileProblem, SourceFile, inspect_file, read_header
from .reconcile import children_without_header, reconcile, units_left_without_rows
from .report import IngestError, IngestReport, RefusalImpact, RuleCount, TableCounts
from .rules import CELL_RULES, check_rules
from .validate import HeaderMap, map_header

log = logging.getLogger(__name__)

DEFAULT_MAX_REFUSED: Final = 0.05


@dataclass
class _Prepared:
    sources: list[tuple[SourceFile, HeaderMap]] = field(default_factory=list)
    normalised: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


def _check_request(dataset: Dataset, files: Mapping[str, Sequence[Path]]) -> list[str]:
    problems = []
    known = {t.name for t in dataset.tables}
    allowed = known | ({CENSUS} if dataset.name == "cin" else set())
    for name in sorted(set(files) - allowed):
        problems.append(
            f"{dataset.name} has no table {name!r} (tables: {', '.join(sorted(allowed))})"
        )
    census = bool(files.get(CENSUS))
    for table in dataset.tables:
        required = table.name not in dataset.optional_tables
        if required and not census and not files.get(table.name):
            problems.append(f"required table {table.name} has no file")
    seen: set[Path] = set()
    for name, paths in files.items():
        for p in paths:
            resolved = Path(p).resolve()
            if resolved in seen:
                problems.append(f"table {name}: file {p} is given more than once")
            seen.add(resolved)
    return problems


def _prepare(dataset: Dataset, files: Mapping[str, Sequence[Path]]) -> _Prepared:
    """Hash every file and check every header before any heavy work: fail fast, all at once."""
    problems = _check_request(dataset, files)
    if problems:
        raise IngestError(problems)
    out = _Prepared()
    wanted: list[tuple[str, Path]] = [(CENSUS, Path(p)) for p in files.get(CENSUS, ())]
    wanted += [(t.name, Path(p)) for t in dataset.tables for p in files.get(t.name, ())]
    for name, path in wanted:
        try:
            src = inspect_file(name, path)
            if name == CENSUS:
                split, mapped = split_census(src)
                out.normalised.update(mapped)
            else:
                split = [src]
            for part in split:
                table = dataset.table(part.table)
                assert table is not None  # checked in _check_request / by census.COLUMNS
                header = map_header(table, read_header(part))
                problems += [f"table {part.table}, file {path}: {x}" for x in header.problems]
                out.sources.append((part, header))
        except FileProblem as e:
            problems.append(f"table {name}, file {path}: {e}")
            continue
        if src.encoding == "cp1252":
            out.notes.append(f"{src.label}: not UTF-8, read as Windows-1252")
        if src.bom:
            out.normalised[(name, "(file)", "UTF-8 byte order mark removed")] += 1
        if src.crlf:
            out.normalised[(name, "(file)", "Windows (CR LF) line endings read")] += 1
    if problems:
        raise IngestError(problems)
    return out


def _validate(
    src: SourceFile,
    dataset: Dataset,
    header: HeaderMap,
    now_year: int,
    builder: DatabaseBuilder,
    rejections: RejectionLog,
    file_index: int,
) -> FileResult:
    table = dataset.table(src.table)
    assert table is not None
    try:
        return validate_file(
            src,
            table,
            header,
            now_year,
            builder,
            rejections,
            unit=dataset.unit,
            file_index=file_index,
        )
    except FileProblem as e:
        problem = f"table {src.table}, file {src.label}: {e}"
    raise IngestError(problem)  # after the except block: FileProblem is not chained


def ingest_dataset(
    dataset: Dataset,
    files: Mapping[str, Sequence[Path]],
    data_dir: Path,
    now: datetime,
    *,
    dry_run: bool = False,
    max_refused_share: float = DEFAULT_MAX_REFUSED,
    key: DataKey | None = None,
) -> IngestReport:
    """Validate and reconcile ``files`` and publish them as ``dataset``'s next version.

    ``files`` maps table names to source files (.csv or .parquet; for ``cin``, the
    pseudo-table ``census`` takes DfE CIN census XML or its flat CSV export). Files
    of one table are given oldest return first. Bad rows are refused and reported;
    a file that cannot be read at all, or lacks a required column, fails the whole
    ingest (IngestError) and nothing is written. So does an ingest that leaves no
    usable row, or refuses more than ``max_refused_share`` of the rows read (the
    error then carries the whole report). Content identical to the latest version
    publishes nothing (outcome "unchanged"); ``dry_run`` publishes nothing either.
    ``now`` places two-digit years and stamps the manifest.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not DATASET_NAME.fullmatch(dataset.name):
        raise IngestError("dataset name is not a plain lower-case identifier")
    if not 0.0 <= max_refused_share <= 1.0:
        raise ValueError("max_refused_share must be between 0 and 1")
    prepared = _prepare(dataset, files)

    dataset_dir = Path(data_dir) / dataset.name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    rejections = RejectionLog()
    loaded = Counter[str]()
    refused = Counter[str]()
    normalised = Counter[tuple[str, str, str]](prepared.normalised)
    refused_units: dict[str, set[str]] = {}
    with ingest_lock(dataset_dir):
        remove_leftovers(dataset_dir)
        builder = DatabaseBuilder(dataset)
        try:
            file_order = {src.label: i for i, (src, _) in enumerate(prepared.sources)}
            for src, header in prepared.sources:
                result = _validate(
                    src,
                    dataset,
                    header,
                    now.year,
                    builder,
                    rejections,
                    file_order[src.label],
                )
                loaded[src.table] += result.loaded
                refused[src.table] += result.rejected
                for (column, kind), n in result.normalised.items():
                    normalised[(src.table, column, kind)] += n
                refused_units.setdefault(src.table, set()).update(
                    u for u in result.refused_units if u
                )
            builder.check_staged()
            con = builder.connection
            recon = reconcile(con, dataset)
            builder.drop_staging()
            without_header = children_without_header(con, dataset)
            rules = check_rules(con, dataset)
            impact = [
                RefusalImpact(
                    t.name,
                    refused[t.name],
                    len(refused_units.get(t.name, ())),
                    units_left_without_rows(
                        con, t.name, dataset.unit, refused_units.get(t.name, set())
                    ),
                )
                for t in dataset.tables
                if refused[t.name]
            ]
            tables = {
                t.name: TableCounts(
                    recon[t.name].rows_kept,
                    refused[t.name],
                    recon[t.name].rows_staged - recon[t.name].rows_kept,
                )
                for t in dataset.tables
            }
            digest = table_content_sha256(con, dataset)
            latest = latest_manifest(dataset_dir)
            rows_read = {t.name: loaded[t.name] + refused[t.name] for t in dataset.tables}
            total_read = sum(rows_read.values())
            share = sum(refused.values()) / total_read if total_read else 0.0
            order = {src.label: i for i, (src, _) in enumerate(prepared.sources)}
            report = IngestReport(
                dataset=dataset.name,
                version=0,
                content_sha256=digest,
                tables=tables,
                rejections=sorted(rejections.listed, key=lambda r: (order[r.file], r.line)),
                rejections_not_listed=rejections.not_listed,
                ignored_columns={s.label: h.ignored for s, h in prepared.sources if h.ignored},
                absent_columns={s.label: h.absent for s, h in prepared.sources if h.absent},
                notes=list(prepared.notes),
                rows_read=rows_read,
                duplicates={n: dict(r.dropped) for n, r in recon.items() if r.dropped},
                conflicts=[
                    (n, col, code, k)
                    for n, r in recon.items()
                    for (col, code), k in sorted(r.conflicts.items())
                ],
                children_without_header=without_header,
                normalisations=[(t, c, k, n) for (t, c, k), n in sorted(normalised.items())],
                refusals_by_reason=[
                    (t, c, reason, CELL_RULES.get((dataset.name, c), ""), n)
                    for (t, c, reason), n in sorted(rejections.by_reason.items())
                ],
                refusal_impact=impact,
                rules=[RuleCount(r.code, r.table, r.message, r.failures) for r in rules],
                refused_share=share,
                max_refused_share=max_refused_share,
            )
            if sum(t.rows_loaded for t in tables.values()) == 0:
                report.problems.append("no usable row remains: nothing to publish")
            elif share > max_refused_share:
                report.problems.append(
                    f"{share:.2%} of rows were refused, over the threshold of "
                    f"{max_refused_share:.2%}: fix the source or raise --max-refused"
                )
            if report.problems:
                report.outcome = "refused"
                report.version = latest.version if latest is not None else 0
                raise IngestError(report.problems, report)
            if latest is not None and latest.content_sha256 == digest:
                report.outcome = "unchanged"
                report.version = latest.version
            elif dry_run:
                report.outcome = "dry run"
                report.version = next_version(dataset_dir)
            else:
                manifest = Manifest(
                    dataset=dataset.name,
                    schema_version=dataset.schema_version,
                    version=next_version(dataset_dir),
                    content_sha256=digest,
                    loaded_at=isoformat(now),
                    tables=tables,
                    children_without_header=without_header,
                )
                publish(dataset_dir, con, manifest, key)
                report.version = manifest.version
        finally:
            builder.close()
    if dry_run and report.outcome == "unchanged":
        report.notes.append("dry run: nothing would be published")
    log.info(
        "ingest of %s: %s (version %d): %d rows loaded, %d rejected",
        dataset.name,
        report.outcome,
        report.version,
        report.rows_loaded,
        report.rows_rejected,
    )
    return report
