"""Dataset versions on disk: numbering, locking, atomic publication, manifests.

Layout: ``<data_dir>/<dataset>/v<N>.duckdb`` plus ``v<N>.json``. The manifest is
written last, atomically, so a version exists exactly when its manifest does;
anything a crash leaves behind is invisible and is cleared by the next ingest.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tessera import canonical

from .report import IngestError, TableCounts

DATASET_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)
VERSION_FILE: Final = re.compile(r"v([1-9][0-9]{0,8})\.(duckdb|json)", re.ASCII)
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

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "schema_version": self.schema_version,
            "version": self.version,
            "content_sha256": self.content_sha256,
            "loaded_at": self.loaded_at,
            "tables": {
                name: {"rows_loaded": c.rows_loaded, "rows_rejected": c.rows_rejected}
                for name, c in self.tables.items()
            },
        }


def content_sha256(sources: Iterable[tuple[str, str, str]]) -> str:
    """SHA-256 (hex) of the canonical JSON of the sorted (table, file name, file sha256) list.

    File names, not paths, so the same files hash the same wherever they sit.
    """
    entries = sorted([table, name, digest] for table, name, digest in sources)
    return hashlib.sha256(canonical.encode(entries)).hexdigest()


def db_path(dataset_dir: Path, version: int) -> Path:
    return dataset_dir / f"v{version}.duckdb"


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
        elif name.startswith(".v") and name.endswith(".tmp"):
            path.unlink(missing_ok=True)
        elif m is not None and m[2] == "duckdb" and f"v{m[1]}.json" not in names:
            path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_only(path: Path) -> None:
    os.chmod(path, os.stat(path).st_mode & ~0o222)


def publish(dataset_dir: Path, built_db: Path, manifest: Manifest) -> None:
    """Move a finished database into place, then make it visible with its manifest."""
    final_db = db_path(dataset_dir, manifest.version)
    _fsync_file(built_db)
    _read_only(built_db)
    os.replace(built_db, final_db)
    _fsync_dir(dataset_dir)
    tmp = dataset_dir / f".v{manifest.version}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, canonical.encode(manifest.to_json()))
        os.fsync(fd)
    finally:
        os.close(fd)
    _read_only(tmp)
    os.replace(tmp, manifest_path(dataset_dir, manifest.version))
    _fsync_dir(dataset_dir)


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``, or None if it is missing or not a valid manifest."""
    m = VERSION_FILE.fullmatch(path.name)
    try:
        raw = json.loads(path.read_bytes())
        tables = {
            str(name): TableCounts(int(c["rows_loaded"]), int(c["rows_rejected"]))
            for name, c in raw["tables"].items()
        }
        manifest = Manifest(
            dataset=raw["dataset"],
            schema_version=raw["schema_version"],
            version=raw["version"],
            content_sha256=raw["content_sha256"],
            loaded_at=raw["loaded_at"],
            tables=tables,
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
