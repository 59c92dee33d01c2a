"""The node's view of its published dataset versions.

A version exists when its manifest (``v<N>.json``) does; ingest writes the
manifest last and atomically. The directory is re-listed on every lookup, so a
new ingest is served without a restart. Connections are read-only, one per
version, shared: callers take ``.cursor()`` per query, because starting a
statement while another result on the same cursor is only partly fetched raises.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import duckdb

from tessera.node.ingest.manifest import DATASET_NAME, VERSION_FILE, db_path, read_manifest

log = logging.getLogger(__name__)

# Queries only ever read this version's tables: no files, no extensions, no URLs,
# and no statement may switch that back on.
_READ_ONLY_CONFIG: Final[dict[str, str | bool | int | float | list[str]]] = {
    "enable_external_access": False,
    "lock_configuration": True,
}


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    version: int
    content_sha256: str
    schema_version: int
    path: Path  # the version's DuckDB file


class DatasetCatalog:
    """Thread-safe. Close it (or use it as a context manager) to release connections."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir)
        self._lock = threading.Lock()
        # Manifests are immutable once published, so a parsed one is good forever.
        self._known: dict[tuple[str, int], DatasetVersion] = {}
        self._warned: set[Path] = set()
        self._connections: dict[tuple[str, int], duckdb.DuckDBPyConnection] = {}
        self._closed = False

    def datasets(self) -> list[str]:
        """Names of datasets with at least one published version."""
        try:
            names = os.listdir(self._data_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if DATASET_NAME.fullmatch(n) and self.versions(n))

    def versions(self, dataset_name: str) -> list[DatasetVersion]:
        """Published versions of ``dataset_name``, oldest first."""
        directory = self._dataset_dir(dataset_name)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            m = VERSION_FILE.fullmatch(name)
            if m is None or m[2] != "json":
                continue
            version = self._load(dataset_name, int(m[1]), directory / name)
            if version is not None:
                found.append(version)
        return sorted(found, key=lambda v: v.version)

    def latest(self, dataset_name: str) -> DatasetVersion | None:
        versions = self.versions(dataset_name)
        return versions[-1] if versions else None

    def connect(self, version: DatasetVersion) -> duckdb.DuckDBPyConnection:
        """The shared read-only connection to ``version``; take ``.cursor()`` per query."""
        key = (version.name, version.version)
        with self._lock:
            if self._closed:
                raise RuntimeError("catalog is closed")
            con = self._connections.get(key)
            if con is not None:
                return con
            known = self._known.get(key)
        if known is None or known != version:
            # Only versions this catalog found itself: never an arbitrary path.
            raise ValueError(f"{version.name} version {version.version} is not published")
        with self._lock:
            if self._closed:
                raise RuntimeError("catalog is closed")
            con = self._connections.get(key)
            if con is None:
                con = duckdb.connect(
                    str(known.path), read_only=True, config=dict(_READ_ONLY_CONFIG)
                )
                self._connections[key] = con
            return con

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = list(self._connections.values())
            self._connections.clear()
        for con in connections:
            con.close()

    def __enter__(self) -> DatasetCatalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _dataset_dir(self, dataset_name: str) -> Path:
        if not DATASET_NAME.fullmatch(dataset_name):
            raise ValueError("not a dataset name")
        return self._data_dir / dataset_name

    def _load(self, dataset_name: str, number: int, manifest: Path) -> DatasetVersion | None:
        key = (dataset_name, number)
        with self._lock:
            known = self._known.get(key)
        if known is not None:
            return known
        parsed = read_manifest(manifest)
        database = db_path(manifest.parent, number)
        if parsed is None or not database.is_file():
            with self._lock:
                first = manifest not in self._warned
                self._warned.add(manifest)
            if first:
                log.warning("ignoring %s: invalid manifest or missing database", manifest)
            return None
        version = DatasetVersion(
            name=parsed.dataset,
            version=parsed.version,
            content_sha256=parsed.content_sha256,
            schema_version=parsed.schema_version,
            path=database,
        )
        with self._lock:
            return self._known.setdefault(key, version)
