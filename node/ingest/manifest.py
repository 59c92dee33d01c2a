"""Dataset versions on disk: numbering, locking, atomic publication, manifests.

Layout: ``<data_dir>/<dataset>/v<N>.sealed`` (the version's tables, encrypted under
the node's data key: node/storage.py, node/vault.py) plus ``v<N>.json``. The
manifest is written last, atomically, so a version exists exactly when its
manifest does; anything a crash leaves behind is invisible and is cleared by the
next ingest. Folders are 0700 and files 0600. Manifests hold counts, never
record-level content. A ``v<N>.duckdb`` is a plaintext version from before
encryption at rest: it keeps its number but is never served.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import duckdb

from tessera import canonical
from tessera.node import storage, vault
from tessera.node.vault import DataKey
from tessera.schemas import Dataset, Table

from .build import quote
from .report import IngestError, TableCounts

DATASET_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)
VERSION_FILE: Final = re.compile(r"v([1-9][0-9]{0,8})\.(sealed|duckdb|json)", re.ASCII)
WORK_PREFIX: Final = ".ingest-"
_LOCK_NAME: Final = ".ingest.lock"
_HEX64: Final = re.compile(r"[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True)
class Manifest:
    dataset: str
    schema_version: int
    version: int
    content_sha256: str
    loaded_at: str
    tables: dict[str, TableCounts]
    # Per table: distinct children with rows there but no header row (their
    # header fields, such as DOB, are NULL in the joined sources).
    children_without_header: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "schema_version": self.schema_version,
            "version": self.version,
            "content_sha256": self.content_sha256,
            "loaded_at": self.loaded_at,
            "tables": {
                name: {
                    "rows_loaded": c.rows_loaded,
                    "rows_rejected": c.rows_rejected,
                    "duplicates_dropped": c.duplicates_dropped,
                }
                for name, c in self.tables.items()
            },
            "children_without_header": dict(self.children_without_header),
        }


def _row_text(table: Table) -> str:
    """SQL for one row as text: each column as VARCHAR (NULL as \\N), joined by \\x1f."""
    parts = [f"coalesce(CAST({quote(c.name)} AS VARCHAR), '\\N')" for c in table.columns]
    return " || chr(31) || ".join(parts) if parts else "''"


def content_sha256(sources: Iterable[tuple[str, str, str]]) -> str:
    """SHA-256 (hex) of the canonical JSON of sorted (table, name, sha256) entries: for
    versions built outside ingest (benchmarks), which have no reconciled tables."""
    entries = sorted([table, name, digest] for table, name, digest in sources)
    return hashlib.sha256(canonical.encode(entries)).hexdigest()


def table_content_sha256(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> str:
    """SHA-256 (hex) of a version's content: the canonical JSON of, per table, its
    row count and the SHA-256 of its rows' MD5s in sorted order.

    It depends only on the reconciled rows (a multiset per table), never on file
    bytes, names, order or date formats: the same data in another layout is the
    same content, and the same content is never published twice.
    """
    tables = {}
    for table in dataset.tables:
        row = con.execute(
            f"SELECT count(*), sha256(coalesce(string_agg(h, '' ORDER BY h), '')) FROM "
            f"(SELECT md5({_row_text(table)}) AS h FROM {quote(table.name)})"
        ).fetchall()[0]
        assert row is not None
        tables[table.name] = [int(row[0]), str(row[1])]
    body = {"dataset": dataset.name, "schema_version": dataset.schema_version, "tables": tables}
    return hashlib.sha256(canonical.encode(body)).hexdigest()


def latest_manifest(dataset_dir: Path) -> Manifest | None:
    """The highest-numbered valid manifest in ``dataset_dir`` (call under the lock)."""
    best: Manifest | None = None
    for name in os.listdir(dataset_dir):
        m = VERSION_FILE.fullmatch(name)
        if m is None or m[2] != "json":
            continue
        found = read_manifest(dataset_dir / name)
        if found is not None and (best is None or found.version > best.version):
            best = found
    return best


def db_path(dataset_dir: Path, version: int) -> Path:
    """Where a plaintext version from before encryption at rest sits (never served)."""
    return dataset_dir / f"v{version}.duckdb"


def sealed_path(dataset_dir: Path, version: int) -> Path:
    return dataset_dir / f"v{version}.sealed"


def manifest_path(dataset_dir: Path, version: int) -> Path:
    return dataset_dir / f"v{version}.json"


def next_version(dataset_dir: Path) -> int:
    """One more than any version number on disk (a manifest whose database has gone
    still holds its number, so a published number is never reused)."""
    highest = 0
    for name in os.listdir(dataset_dir):
        m = VERSION_FILE.fullmatch(name)
        if m is not None:
            highest = max(highest, int(m[1]))
    return highest + 1


@contextmanager
def ingest_lock(dataset_dir: Path) -> Iterator[None]:
    """One ingest per dataset at a time (across processes), failing fast if busy."""
    fd = os.open(dataset_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise IngestError("another ingest of this dataset is in progress") from None
            raise
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_leftovers(dataset_dir: Path) -> None:
    """Clear what crashed ingests left: work directories, temp files, and databases
    whose manifest was never written (never visible, so nobody can be using them).
    Call under the lock."""
    names = set(os.listdir(dataset_dir))
    for name in names:
        path = dataset_dir / name
        m = VERSION_FILE.fullmatch(name)
        if name.startswith(WORK_PREFIX) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(".v") and name.endswith((".tmp", ".tmp.wal")):
            path.unlink(missing_ok=True)
        elif m is not None and m[2] != "json" and f"v{m[1]}.json" not in names:
            path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_dirs(dataset_dir: Path) -> None:
    for d in (dataset_dir.parent, dataset_dir):
        if os.stat(d).st_mode & 0o077:
            os.chmod(d, 0o700)


def publish(
    dataset_dir: Path,
    built: duckdb.DuckDBPyConnection | Path,
    manifest: Manifest,
    key: DataKey | None = None,
) -> None:
    """Seal the finished version into place, then make it visible with its manifest.

    ``built`` is the connection the version was built in (its tables named in the
    manifest are sealed; anything else, such as staging tables, is left out), or the
    path of a DuckDB file built on disk (older builders; the file is removed).
    ``key`` is the node's data key (default: TESSERA_DATA_KEY_FILE / TESSERA_DATA_KEY).
    """
    if key is None:
        try:
            key = vault.default_key()
        except vault.VaultError as e:
            raise IngestError(str(e)) from None
    _private_dirs(dataset_dir)
    final = sealed_path(dataset_dir, manifest.version)
    tmp = dataset_dir / f".v{manifest.version}.sealed.tmp"
    tmp.unlink(missing_ok=True)
    names = list(manifest.tables)
    try:
        if isinstance(built, Path):
            con = duckdb.connect(str(built), read_only=True)
            try:
                storage.seal_to(tmp, con, key, manifest.dataset, manifest.version, names)
            finally:
                con.close()
            built.unlink()
        else:
            storage.seal_to(tmp, built, key, manifest.dataset, manifest.version, names)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dataset_dir)
    tmp = dataset_dir / f".v{manifest.version}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, canonical.encode(manifest.to_json()))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, manifest_path(dataset_dir, manifest.version))
    _fsync_dir(dataset_dir)


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``, or None if it is missing or not a valid manifest."""
    m = VERSION_FILE.fullmatch(path.name)
    try:
        raw = json.loads(path.read_bytes())
        tables = {
            str(name): TableCounts(
                int(c["rows_loaded"]),
                int(c["rows_rejected"]),
                int(c.get("duplicates_dropped", 0)),
            )
            for name, c in raw["tables"].items()
        }
        without_header = {
            str(name): int(n) for name, n in raw.get("children_without_header", {}).items()
        }
        manifest = Manifest(
            dataset=raw["dataset"],
            schema_version=raw["schema_version"],
            version=raw["version"],
            content_sha256=raw["content_sha256"],
            loaded_at=raw["loaded_at"],
            tables=tables,
            children_without_header=without_header,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    valid = (
        m is not None
        and m[2] == "json"
        and type(manifest.version) is int
        and manifest.version == int(m[1])
        and type(manifest.schema_version) is int
        and isinstance(manifest.dataset, str)
        and manifest.dataset == path.parent.name
        and isinstance(manifest.content_sha256, str)
        and _HEX64.fullmatch(manifest.content_sha256) is not None
        and isinstance(manifest.loaded_at, str)
    )
    return manifest if valid else None
