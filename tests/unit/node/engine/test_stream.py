"""A one-table source's frame read straight from the sealed file, batch by batch,
equals the frame built from the version's in-memory DuckDB copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from tessera.node import storage, vault
from tessera.node.catalog import DatasetCatalog
from tessera.node.engine import frame as frames
from tessera.node.engine import stream
from tessera.node.ingest.manifest import Manifest, next_version, publish, sealed_path
from tessera.node.ingest.report import TableCounts

ORDER_KEY = bytes(range(32))
# Random health rows: NULLs in every nullable column, a wide and a negative integer
# range, units with many records; more rows than several Arrow batches and seal chunks.
_ROWS = """
INSERT INTO ed_attendances SELECT
  'N' || (hash(i, $seed, 1) % $units) AS nhs_number,
  CASE WHEN hash(i, $seed, 2) % 50 = 0 THEN NULL
       ELSE DATE '1990-01-01' + CAST(hash(i, $seed, 3) % 15000 AS INTEGER) END,
  CASE WHEN hash(i, $seed, 4) % 40 = 0 THEN NULL
       ELSE CAST(hash(i, $seed, 5) % $span AS BIGINT) - $shift END,
  CASE WHEN hash(i, $seed, 6) % 30 = 0 THEN NULL
       ELSE CAST(1 + hash(i, $seed, 7) % 4 AS VARCHAR) END,
  hash(i, $seed, 8) % 2 = 0,
  CASE WHEN hash(i, $seed, 9) % 20 = 0 THEN NULL ELSE hash(i, $seed, 10) % 9 = 0 END,
  CASE WHEN hash(i, $seed, 11) % 25 = 0 THEN NULL ELSE hash(i, $seed, 12) % 31 = 0 END
FROM range($n) t(i)
"""


def publish_health(data: Path, n: int, seed: int, span: int, shift: int) -> int:
    folder = data / "health"
    folder.mkdir(parents=True, exist_ok=True)
    version = next_version(folder)
    with duckdb.connect(":memory:") as con:
        con.execute(
            "CREATE TABLE ed_attendances (nhs_number VARCHAR, arrival_date DATE, "
            "age_years BIGINT, attendance_category VARCHAR, injury BOOLEAN, "
            "safeguarding_concern BOOLEAN, opted_out BOOLEAN)"
        )
        params = {"seed": seed, "units": max(n // 3, 1), "n": n, "span": span, "shift": shift}
        con.execute(_ROWS, params)
        manifest = Manifest(
            dataset="health",
            schema_version=1,
            version=version,
            content_sha256=f"{version:064x}",
            loaded_at="2026-12-02T00:00:00Z",
            tables={"ed_attendances": TableCounts(n, 0)},
        )
        publish(folder, con, manifest)
    return version


def decoded(col: frames.Column) -> Any:
    if col.kind == "code":
        return np.array([*col.dictionary, None], dtype=object)[col.values]
    return col.values


def assert_frames_equal(a: frames.Frame | None, b: frames.Frame | None) -> None:
    assert a is not None and b is not None
    assert (a.n, a.ties) == (b.n, b.ties)
    for name in ("unit_of_row", "starts", "counts", "opted_out"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.columns.keys() == b.columns.keys()
    for name, col in a.columns.items():
        other = b.columns[name]
        assert (col.kind, col.values.dtype) == (other.kind, other.values.dtype), name
        assert np.array_equal(decoded(col), decoded(other)), name
        assert (col.null is None) == (other.null is None)
        if col.null is not None:
            assert other.null is not None and np.array_equal(col.null, other.null), name
        assert set(col.dictionary) == set(other.dictionary), name


@pytest.mark.parametrize(
    ("n", "seed", "span", "shift"),
    [(300_000, 1, 121, 0), (130_000, 2, 1 << 40, 1 << 39), (7, 3, 3, 1)],
)
def test_the_streamed_frame_is_the_duckdb_frame(
    tmp_path: Path, n: int, seed: int, span: int, shift: int
) -> None:
    data = tmp_path / "data"
    version = publish_health(data, n, seed, span, shift)
    path = sealed_path(data / "health", version)
    key = vault.default_key()
    if n > storage.BATCH_ROWS:  # several Arrow batches, several sealed chunks
        assert path.stat().st_size > 2 * vault.CHUNK_BYTES
    streamed = stream.build_sealed(path, key, "health", version, "ed_attendances", ORDER_KEY)
    assert streamed is not False
    con = storage.open_sealed(path, key, "health", version)
    try:
        built = frames.build(con, "health", "ed_attendances", ORDER_KEY)
    finally:
        con.close()
    assert_frames_equal(streamed, built)
    assert streamed is not None and streamed.n == n


def test_only_one_table_sources_are_streamed(tmp_path: Path) -> None:
    assert stream.one_table("health", "ed_attendances") == "ed_attendances"
    assert stream.one_table("ssda903", "header") == "header"
    assert stream.one_table("ssda903", "episodes") is None  # a join: DuckDB's scan
    assert stream.one_table("education", "attendance") is None
    data = tmp_path / "data"
    version = publish_health(data, 1000, 4, 121, 0)
    with DatasetCatalog(data) as catalog:
        v = catalog.latest("health")
        assert v is not None and v.version == version
        assert catalog.frame(v, "ed_attendances", ORDER_KEY) is not None
        assert (catalog.built, catalog.streamed) == (1, 1)
