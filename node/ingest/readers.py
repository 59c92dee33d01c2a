"""Reading source files (CSV or Parquet) as batches of raw text columns.

Every message raised from here is fixed text plus file, line and column names:
the library errors underneath (csv, codecs, DuckDB) quote file content, so they
are caught and replaced, never chained.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import duckdb

if TYPE_CHECKING:
    from _csv import Reader as _CsvReader

BATCH_ROWS: Final = 20_000  # small enough that the cyclic GC stays cheap
_CHUNK: Final = 1 << 20


class FileProblem(Exception):
    """A source file that cannot be read at all. The message holds no file content."""


@dataclass(frozen=True)
class MemoryTable:
    """Rows already extracted from a source (a CIN census file), as raw text."""

    header: list[str]
    rows: list[list[str]]
    lines: list[int]  # where each row came from: CSV line or XML <Child> number


@dataclass(frozen=True)
class SourceFile:
    table: str
    path: Path
    kind: Literal["csv", "parquet", "xml", "memory"]
    sha256: str
    encoding: str  # CSV text encoding; "" for Parquet
    bom: bool = False  # the CSV started with a UTF-8 byte order mark
    crlf: bool = False  # the CSV has Windows (CR LF) line endings
    memory: MemoryTable | None = None

    @property
    def label(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Batch:
    columns: list[Sequence[str]]  # the requested columns, in the order requested
    lines: Sequence[int]  # physical line (CSV, header = 1) or 1-based row (Parquet) per row


def inspect_file(table: str, path: Path) -> SourceFile:
    """Hash the file and, for CSV, settle its text encoding in the same pass."""
    suffix = path.suffix.lower()
    kind: Literal["csv", "parquet", "xml"]
    if suffix == ".csv":
        kind = "csv"
    elif suffix in (".parquet", ".pq"):
        kind = "parquet"
    elif suffix == ".xml" and table == "census":
        kind = "xml"
    else:
        raise FileProblem("not a .csv or .parquet file")
    digest = hashlib.sha256()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    is_utf8 = kind == "csv"
    first = True
    bom = crlf = False
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                if first:
                    bom, crlf, first = chunk.startswith(codecs.BOM_UTF8), b"\r\n" in chunk, False
                digest.update(chunk)
                if is_utf8:
                    is_utf8 = _decodes(utf8, chunk, final=False)
            if is_utf8:
                is_utf8 = _decodes(utf8, b"", final=True)
    except FileNotFoundError:
        raise FileProblem("file not found") from None
    except OSError:
        raise FileProblem("file cannot be read") from None
    encoding = ""
    if kind == "csv":
        # Spreadsheet exports in England are UTF-8 (often with a BOM) or Windows-1252.
        encoding = "utf-8-sig" if is_utf8 else "cp1252"
        if encoding == "cp1252" and not _decodes_file(path, "cp1252"):
            raise FileProblem("not readable as UTF-8 or Windows-1252 text")
    if kind != "csv":
        bom = crlf = False
    return SourceFile(table, path, kind, digest.hexdigest(), encoding, bom, crlf)


def _decodes(decoder: codecs.IncrementalDecoder, chunk: bytes, *, final: bool) -> bool:
    try:
        decoder.decode(chunk, final)
    except UnicodeDecodeError:
        return False
    return True


def _decodes_file(path: Path, encoding: str) -> bool:
    decoder = codecs.getincrementaldecoder(encoding)()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            if not _decodes(decoder, chunk, final=False):
                return False
    return _decodes(decoder, b"", final=True)


def read_header(src: SourceFile) -> list[str]:
    if src.memory is not None:
        return list(src.memory.header)
    if src.kind == "parquet":
        return [name for name, _ in _parquet_columns(src)]
    with src.path.open(encoding=src.encoding, newline="") as f:
        for record in _csv_records(csv.reader(f)):
            if any(record):
                return record
    raise FileProblem("empty file: no header line")


def iter_batches(
    src: SourceFile, positions: Sequence[int], on_malformed: Callable[[int, str], None]
) -> Iterator[Batch]:
    """Batches of the file's columns at ``positions``.

    Rows that are blank (every field empty, as spreadsheets leave at the end) are
    skipped; CSV rows with the wrong number of fields go to ``on_malformed``.
    """
    if src.memory is not None:
        mem = src.memory
        for start in range(0, len(mem.rows), BATCH_ROWS):
            chunk = mem.rows[start : start + BATCH_ROWS]
            yield _columns(chunk, mem.lines[start : start + BATCH_ROWS], positions)
    elif src.kind == "parquet":
        yield from _parquet_batches(src, positions)
    else:
        yield from _csv_batches(src, positions, on_malformed)


def _malformed(line: int) -> str:
    # In practice csv.Error means a field over the module's size limit (often an
    # unbalanced quote swallowing the rest of the file).
    return f"malformed CSV (unbalanced quote or oversized field) at line {line}"


def _csv_records(reader: Iterator[list[str]]) -> Iterator[list[str]]:
    """csv.reader, with its errors (which may quote content) replaced by fixed text."""
    while True:
        failed = False
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error:
            failed = True
        if failed:  # raised outside the except block so that nothing is chained
            raise FileProblem(_malformed(getattr(reader, "line_num", 0)))
        yield record


def _csv_batches(
    src: SourceFile, positions: Sequence[int], on_malformed: Callable[[int, str], None]
) -> Iterator[Batch]:
    with src.path.open(encoding=src.encoding, newline="") as f:
        reader = csv.reader(f)
        failed = False
        try:
            yield from _csv_reader_batches(reader, positions, on_malformed)
        except csv.Error:
            failed = True
        if failed:  # csv's message may quote the file; raise a fixed one, unchained
            raise FileProblem(_malformed(reader.line_num))


def _line_breaks(field: str) -> int:
    # As the file iterator splits lines with newline="": at \n, \r and \r\n.
    return field.count("\n") + field.count("\r") - field.count("\r\n")


def _csv_reader_batches(
    reader: _CsvReader, positions: Sequence[int], on_malformed: Callable[[int, str], None]
) -> Iterator[Batch]:
    width = 0
    for header in reader:
        if any(header):
            width = len(header)
            break
    while True:
        first_line = reader.line_num + 1
        records = list(islice(reader, BATCH_ROWS))
        if not records:
            return
        # Fast path, all in C: one line per record, the right width, no blank rows.
        single_lines = reader.line_num - first_line + 1 == len(records)
        if (
            single_lines
            and list(map(len, records)).count(width) == len(records)
            and "" not in map(itemgetter(0), records)
        ):
            yield _columns(records, range(first_line, first_line + len(records)), positions)
            continue
        rows: list[list[str]] = []
        lines: list[int] = []
        line = first_line
        for record in records:
            start, line = line, line + (1 if single_lines else 1 + sum(map(_line_breaks, record)))
            if len(record) > width and not any(record[width:]):
                record = record[:width]  # trailing empty fields left by a spreadsheet
            if not any(record):
                continue  # blank line or a row of empty cells
            if len(record) != width:
                on_malformed(start, f"expected {width} fields, found {len(record)}")
                continue
            rows.append(record)
            lines.append(start)
        if rows:
            yield _columns(rows, lines, positions)


def _columns(
    rows: Sequence[Sequence[str]], lines: Sequence[int], positions: Sequence[int]
) -> Batch:
    return Batch([list(map(itemgetter(p), rows)) for p in positions], lines)


def _parquet_columns(src: SourceFile) -> list[tuple[str, str]]:
    failed = False
    try:
        with duckdb.connect() as con:
            described = con.execute(
                "DESCRIBE SELECT * FROM read_parquet(?)", [str(src.path)]
            ).fetchall()
    except duckdb.Error:
        failed = True
    if failed:
        raise FileProblem("could not read Parquet file")
    return [(str(row[0]), str(row[1])) for row in described]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _parquet_batches(src: SourceFile, positions: Sequence[int]) -> Iterator[Batch]:
    columns = _parquet_columns(src)
    exprs = []
    for p in positions:
        name, type_ = columns[p]
        expr = _quote(name)
        if type_ == "DATE" or type_.startswith("TIMESTAMP"):
            expr = f"CAST({expr} AS DATE)"  # a timestamp column holding dates
        exprs.append(f"COALESCE(CAST({expr} AS VARCHAR), '')")
    sql = f"SELECT file_row_number, {', '.join(exprs)} FROM read_parquet(?, file_row_number = true)"
    failed = False
    with duckdb.connect() as con:
        try:
            cursor = con.execute(sql, [str(src.path)])
            while True:
                rows = cursor.fetchmany(BATCH_ROWS)
                if not rows:
                    break
                lines = [n + 1 for n in map(itemgetter(0), rows)]
                yield _columns(rows, lines, range(1, len(positions) + 1))
        except duckdb.Error:
            failed = True
    if failed:
        raise FileProblem("could not read Parquet file")
