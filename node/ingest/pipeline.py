"""``ingest_dataset``: source files in, one new immutable dataset version out."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from tessera.clock import isoformat
from tessera.schemas import Dataset, Table

from .build import DatabaseBuilder
from .load import FileResult, RejectionLog, validate_file
from .manifest import (
    DATASET_NAME,
    WORK_PREFIX,
    Manifest,
    content_sha256,
    ingest_lock,
    next_version,
    publish,
    remove_leftovers,
)
from .readers import FileProblem, SourceFile, inspect_file, read_header
from .report import IngestError, IngestReport, TableCounts
from .validate import HeaderMap, map_header

log = logging.getLogger(__name__)


def _check_request(dataset: Dataset, files: Mapping[str, Sequence[Path]]) -> list[str]:
    problems = []
    known = {t.name for t in dataset.tables}
    for name in sorted(set(files) - known):
        problems.append(
            f"{dataset.name} has no table {name!r} (tables: {', '.join(sorted(known))})"
        )
    for table in dataset.tables:
        if table.name not in dataset.optional_tables and not files.get(table.name):
            problems.append(f"required table {table.name} has no file")
    seen: set[Path] = set()
    for name, paths in files.items():
        for p in paths:
            resolved = Path(p).resolve()
            if resolved in seen:
                problems.append(f"table {name}: file {p} is given more than once")
            seen.add(resolved)
    return problems


def _prepare(
    dataset: Dataset, files: Mapping[str, Sequence[Path]]
) -> list[tuple[SourceFile, HeaderMap]]:
    """Hash every file and check every header before any heavy work: fail fast, all at once."""
    problems = _check_request(dataset, files)
    if problems:
        raise IngestError(problems)
    prepared = []
    for table in dataset.tables:
        for p in files.get(table.name, ()):
            path = Path(p)
            try:
                src = inspect_file(table.name, path)
                header = map_header(table, read_header(src))
            except FileProblem as e:
                problems.append(f"table {table.name}, file {path}: {e}")
                continue
            problems += [f"table {table.name}, file {path}: {x}" for x in header.problems]
            prepared.append((src, header))
    if problems:
        raise IngestError(problems)
    return prepared


def _validate(
    src: SourceFile,
    table: Table,
    header: HeaderMap,
    now_year: int,
    builder: DatabaseBuilder,
    rejections: RejectionLog,
) -> FileResult:
    try:
        return validate_file(src, table, header, now_year, builder, rejections)
    except FileProblem as e:
        problem = f"table {src.table}, file {src.label}: {e}"
    raise IngestError(problem)  # after the except block: FileProblem is not chained


def ingest_dataset(
    dataset: Dataset, files: Mapping[str, Sequence[Path]], data_dir: Path, now: datetime
) -> IngestReport:
    """Validate ``files`` against ``dataset`` and publish them as its next version.

    ``files`` maps table names to source files (.csv or .parquet). Bad rows are
    rejected and reported; a file that cannot be read at all, or lacks a
    required column, fails the whole ingest (IngestError) and nothing is written.
    ``now`` places two-digit years and stamps the manifest.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not DATASET_NAME.fullmatch(dataset.name):
        raise IngestError("dataset name is not a plain lower-case identifier")
    prepared = _prepare(dataset, files)

    dataset_dir = Path(data_dir) / dataset.name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    rejections = RejectionLog()
    counts = {t.name: [0, 0] for t in dataset.tables}
    with ingest_lock(dataset_dir):
        remove_leftovers(dataset_dir)
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=dataset_dir))
        built = work / "build.duckdb"
        try:
            builder = DatabaseBuilder(built, dataset, work)
            try:
                for src, header in prepared:
                    table = dataset.table(src.table)
                    assert table is not None  # checked in _prepare
                    result = _validate(src, table, header, now.year, builder, rejections)
                    counts[src.table][0] += result.loaded
                    counts[src.table][1] += result.rejected
                builder.finish({name: c[0] for name, c in counts.items()})
            finally:
                builder.close()
            tables = {name: TableCounts(c[0], c[1]) for name, c in counts.items()}
            manifest = Manifest(
                dataset=dataset.name,
                schema_version=dataset.schema_version,
                version=next_version(dataset_dir),
                content_sha256=content_sha256(
                    (src.table, src.path.name, src.sha256) for src, _ in prepared
                ),
                loaded_at=isoformat(now),
                tables=tables,
            )
            publish(dataset_dir, built, manifest)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    order = {src.label: i for i, (src, _) in enumerate(prepared)}
    report = IngestReport(
        dataset=dataset.name,
        version=manifest.version,
        content_sha256=manifest.content_sha256,
        tables=tables,
        rejections=sorted(rejections.listed, key=lambda r: (order[r.file], r.line)),
        rejections_not_listed=rejections.not_listed,
        ignored_columns={s.label: h.ignored for s, h in prepared if h.ignored},
        absent_columns={s.label: h.absent for s, h in prepared if h.absent},
        notes=[
            f"{s.label}: not UTF-8, read as Windows-1252"
            for s, _ in prepared
            if s.encoding == "cp1252"
        ],
    )
    log.info(
        "ingested %s version %d: %d rows loaded, %d rejected",
        dataset.name,
        manifest.version,
        report.rows_loaded,
        report.rows_rejected,
    )
    return report
