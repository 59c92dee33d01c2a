"""The catalog: latest published version, read-only shared connections."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from tessera.node.catalog import DatasetCatalog, DatasetVersion
from tessera.node.ingest import ingest_dataset
from tessera.schemas import DATASETS
from tests.unit.node.helpers import NOW, valid_file_set

POLICE = DATASETS["police"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for rows in (2, 3):
        files = valid_file_set(tmp_path / f"src{rows}", POLICE, rows=rows)
        ingest_dataset(POLICE, files, tmp_path / "data", NOW)
    return tmp_path / "data"


@pytest.fixture
def catalog(data: Path) -> Iterator[DatasetCatalog]:
    with DatasetCatalog(data) as c:
        yield c


def count(con: duckdb.DuckDBPyConnection) -> int:
    cur = con.cursor()
    try:
        row = cur.execute("SELECT count(*) FROM incidents").fetchone()
    finally:
        cur.close()
    assert row is not None
    return int(row[0])


def test_latest_is_the_highest_published_version(data: Path, catalog: DatasetCatalog) -> None:
    latest = catalog.latest("police")
    assert latest is not None
    assert (latest.name, latest.version, latest.schema_version) == ("police", 2, 1)
    assert latest.path == data / "police" / "v2.duckdb"
    assert len(latest.content_sha256) == 64
    assert [v.version for v in catalog.versions("police")] == [1, 2]
    assert catalog.datasets() == ["police"]
    assert catalog.latest("cin") is None


def test_a_new_ingest_is_picked_up_without_restart(
    tmp_path: Path, data: Path, catalog: DatasetCatalog
) -> None:
    before = catalog.latest("police")
    files = valid_file_set(tmp_path / "src9", POLICE, rows=9)
    ingest_dataset(POLICE, files, data, NOW)
    latest = catalog.latest("police")
    assert latest is not None and before is not None
    assert latest.version == 3
    assert count(catalog.connect(latest)) == 9
    assert count(catalog.connect(before)) == 3  # older versions stay readable


def test_connections_are_shared_per_version(catalog: DatasetCatalog) -> None:
    v1, v2 = catalog.versions("police")
    assert catalog.connect(v2) is catalog.connect(v2)
    assert catalog.connect(v1) is not catalog.connect(v2)
    assert count(catalog.connect(v1)) == 2


def test_connections_are_read_only_and_cannot_touch_files(
    tmp_path: Path, catalog: DatasetCatalog
) -> None:
    latest = catalog.latest("police")
    assert latest is not None
    cur = catalog.connect(latest).cursor()
    try:
        with pytest.raises(duckdb.Error):
            cur.execute("CREATE TABLE x (a INTEGER)")
        with pytest.raises(duckdb.Error):
            cur.execute("DELETE FROM incidents")
        secret = tmp_path / "secret.csv"
        secret.write_text("a\n1\n")
        with pytest.raises(duckdb.Error):
            cur.execute(f"SELECT * FROM read_csv('{secret}')")
        with pytest.raises(duckdb.Error):
            cur.execute("SET enable_external_access = true")
    finally:
        cur.close()


def test_concurrent_connects_share_one_connection(catalog: DatasetCatalog) -> None:
    latest = catalog.latest("police")
    assert latest is not None
    seen: list[object] = []
    counts: list[int] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        con = catalog.connect(latest)
        seen.append(con)
        counts.append(count(con))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 1
    assert counts == [3] * 8


def test_only_versions_found_by_the_catalog_can_be_opened(
    tmp_path: Path, catalog: DatasetCatalog
) -> None:
    latest = catalog.latest("police")
    assert latest is not None
    with pytest.raises(ValueError, match="not published"):
        catalog.connect(replace(latest, path=tmp_path / "elsewhere.duckdb"))
    with pytest.raises(ValueError, match="not published"):
        catalog.connect(DatasetVersion("police", 7, "0" * 64, 1, latest.path))
    with pytest.raises(ValueError):
        catalog.latest("../police")


def test_bad_manifests_and_missing_databases_are_skipped(
    data: Path, catalog: DatasetCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    (data / "police" / "v3.json").write_text("{broken")
    (data / "police" / "v4.json").write_bytes((data / "police" / "v2.json").read_bytes())
    with caplog.at_level(logging.WARNING):
        latest = catalog.latest("police")
        catalog.latest("police")
    assert latest is not None and latest.version == 2
    assert caplog.text.count("v3.json") == 1  # warned once, not on every lookup
    assert "v4.json" in caplog.text


def test_closed_catalog_refuses_connections(catalog: DatasetCatalog) -> None:
    latest = catalog.latest("police")
    assert latest is not None
    con = catalog.connect(latest)
    catalog.close()
    with pytest.raises(RuntimeError):
        catalog.connect(latest)
    with pytest.raises(duckdb.Error):
        con.cursor()


def test_missing_data_dir_is_empty(tmp_path: Path) -> None:
    with DatasetCatalog(tmp_path / "nothing") as catalog:
        assert catalog.datasets() == []
        assert catalog.latest("police") is None
