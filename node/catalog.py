"""The node's view of its published dataset versions.

A version exists when its manifest (``v<N>.json``) and its sealed tables
(``v<N>.sealed``) do; ingest writes the manifest last and atomically. The
directory is re-listed on every lookup, so a new ingest is served without a
restart. A version is decrypted (node/storage.py) into an in-memory DuckDB
database the first time it is connected to; nothing is decrypted to disk.
Connections are locked down, one per version, shared: callers take ``.cursor()``
per query, because starting a statement while another result on the same cursor
is only partly fetched raises. Loading a version forgets the catalog's connections
to older versions of that dataset; each one's memory is freed when its last cursor
is (an older version asked for again is decrypted again). A plaintext
``v<N>.duckdb`` from before encryption at rest is refused, with a warning saying
to re-ingest it. The query engine's frames (node/engine) are built from a version's
connection (a one-table source: straight from the sealed file, batch by batch, with
no whole decrypted copy; node/engine/stream.py) and cached here, in memory only;
building one forgets that connection (a query the engine declines decrypts the
version again). `warm` builds them in a background thread when the node starts and
when a newer version appears.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import duckdb

from tessera import schemas
from tessera.node import storage, vault
from tessera.node.compiler import order_words
from tessera.node.engine import frame as frames
from tessera.node.engine import stream
from tessera.node.ingest.manifest import (
    DATASET_NAME,
    VERSION_FILE,
    db_path,
    read_manifest,
    sealed_path,
)
from tessera.node.vault import DataKey

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    version: int
    content_sha256: str
    schema_version: int
    path: Path  # the version's sealed file
    # From the manifest: (table, distinct children with rows there but no header
    # row, so NULL header fields such as DOB), e.g. (("episodes", 3),). Read it
    # with dict(version.children_without_header).
    children_without_header: tuple[tuple[str, int], ...] = ()
    # From the manifest: rows per table, e.g. (("episodes", 1200),) (sizes a frame).
    table_rows: tuple[tuple[str, int], ...] = ()


class DatasetCatalog:
    """Thread-safe. Close it (or use it as a context manager) to release connections."""

    def __init__(self, data_dir: Path, key: DataKey | None = None) -> None:
        """``key`` opens the sealed versions (default: TESSERA_DATA_KEY_FILE or
        TESSERA_DATA_KEY, read when a version is first connected to)."""
        self._data_dir = Path(data_dir)
        self._key = key
        self._lock = threading.Lock()
        # One loader per version at a time: a version is decrypted once, not per caller.
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        # Manifests are immutable once published, so a parsed one is good forever.
        self._known: dict[tuple[str, int], DatasetVersion] = {}
        self._warned: set[Path] = set()
        self._connections: dict[tuple[str, int], duckdb.DuckDBPyConnection] = {}
        # The engine's frames, per (dataset, version, source, order words); None: that
        # source cannot be framed. In memory only: a frame's order depends on the secret.
        self._frames: dict[tuple[str, int, str, int, int], frames.Frame | None] = {}
        self._frame_loading: dict[tuple[str, int, str], threading.Lock] = {}
        self._closed = False
        # Frames built, and of those read straight from the sealed file (for tests).
        self.built = 0
        self.streamed = 0
        self._stop = threading.Event()
        self._warmed = threading.Event()
        self._warm_thread: threading.Thread | None = None

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
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if self._closed:
                    raise RuntimeError("catalog is closed")
                con = self._connections.get(key)
                if con is not None:
                    return con
                if self._key is None:
                    self._key = vault.default_key()
                data_key = self._key
            con = storage.open_sealed(known.path, data_key, known.name, known.version)
            with self._lock:
                if self._closed:
                    con.close()
                    raise RuntimeError("catalog is closed")
                self._connections[key] = con
                # A newer version supersedes older ones: forget them (never close them,
                # a query may still be running), so their memory goes with the last user.
                for old in [k for k in self._connections if k[0] == key[0] and k[1] < key[1]]:
                    del self._connections[old]
            return con

    def frame(self, version: DatasetVersion, source: str, order_key: bytes) -> frames.Frame | None:
        """The engine's frame of one source of ``version`` (built on first use, shared)."""
        key = (version.name, version.version, source, *order_words(order_key))
        with self._lock:
            if key in self._frames:
                return self._frames[key]
            loading = self._frame_loading.setdefault(key[:3], threading.Lock())
        with loading:
            with self._lock:
                if key in self._frames:
                    return self._frames[key]
            built = self._build(version, source, order_key)
            with self._lock:
                # Whichever way it was built, the frame stands in for the in-memory copy.
                self._connections.pop(key[:2], None)
            self.built += 1
            with self._lock:
                if self._closed:
                    raise RuntimeError("catalog is closed")
                self._frames[key] = built
                # As for connections: a newer version's frames supersede older ones.
                for old in [k for k in self._frames if k[0] == key[0] and k[1] < key[1]]:
                    del self._frames[old]
            return built

    def _build(self, version: DatasetVersion, source: str, order_key: bytes) -> frames.Frame | None:
        """A one-table source straight from the sealed file, batch by batch (no whole
        decrypted copy); a joined one from the version's in-memory DuckDB copy."""
        table = stream.one_table(version.name, source)
        if table is not None:
            with self._lock:
                if self._key is None:
                    self._key = vault.default_key()
                data_key = self._key
            built = stream.build_sealed(
                version.path,
                data_key,
                version.name,
                version.version,
                source,
                order_key,
                rows_hint=dict(version.table_rows).get(table, 0),
            )
            if built is not False:
                self.streamed += 1
                return built
        scanned = frames.scan(self.connect(version), version.name, source, order_key)
        with self._lock:
            # The frame stands in for the in-memory copy (held only while the scan
            # ran): forget it, so its memory goes with its last cursor; a query the
            # engine declines decrypts the version again.
            self._connections.pop((version.name, version.version), None)
        return frames.finish(scanned)

    def warm(
        self, datasets: Iterable[str], order_key: bytes, every: float | None = 5.0
    ) -> threading.Thread:
        """Build the frames of every source of each dataset's latest version in a
        background thread, so the first query does not pay for them (one arriving
        meanwhile waits for that build, not a second one); then, every `every`
        seconds, those of a newer version (an ingest publishes without telling the
        node). Stops when the catalog is closed."""
        names = sorted(datasets)
        thread = threading.Thread(
            target=self._warm, args=(names, order_key, every), name="frames-warm", daemon=True
        )
        thread.start()
        self._warm_thread = thread
        return thread

    def wait_warm(self, timeout: float | None = None) -> bool:
        """True once a warm-up pass over every dataset has finished."""
        return self._warmed.wait(timeout)

    @property
    def warming(self) -> bool:
        return not self._warmed.is_set()

    def _warm(self, names: list[str], order_key: bytes, every: float | None) -> None:
        while not self._stop.is_set():
            for name in names:
                ds = schemas.dataset(name)
                version = self.latest(name)
                if ds is None or version is None:
                    continue
                for source in ds.sources:
                    if self._stop.is_set():
                        return
                    try:
                        self.frame(version, source, order_key)
                    except Exception as e:  # a query builds it (or reports it) instead
                        if not self._stop.is_set():
                            # The type only: an exception's text can carry data values.
                            log.warning("warm-up of a frame failed (%s)", type(e).__name__)
            self._warmed.set()
            if every is None or self._stop.wait(every):
                return

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._closed = True
            connections = list(self._connections.values())
            self._connections.clear()
            self._frames.clear()
        warm = self._warm_thread
        if warm is not None and warm is not threading.current_thread():
            # A warm-up scan may be running on one of these connections: stop it first
            # (DuckDB refuses to close a connection that is busy with another call).
            for con in connections:
                con.interrupt()
            warm.join(timeout=60)
        for con in connections:
            try:
                con.close()
            except duckdb.Error:  # still busy: its memory goes with its last user
                log.warning("a dataset connection was busy at close")

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
        database = sealed_path(manifest.parent, number)
        if parsed is None or not database.is_file():
            with self._lock:
                first = manifest not in self._warned
                self._warned.add(manifest)
            if first:
                if db_path(manifest.parent, number).is_file():
                    log.warning(
                        "ignoring %s: an unencrypted version from before encryption at rest; "
                        "ingest its files again",
                        manifest,
                    )
                else:
                    log.warning("ignoring %s: invalid manifest or missing sealed file", manifest)
            return None
        version = DatasetVersion(
            name=parsed.dataset,
            version=parsed.version,
            content_sha256=parsed.content_sha256,
            schema_version=parsed.schema_version,
            path=database,
            children_without_header=tuple(sorted(parsed.children_without_header.items())),
            table_rows=tuple(sorted((t, c.rows_loaded) for t, c in parsed.tables.items())),
        )
        with self._lock:
            return self._known.setdefault(key, version)
