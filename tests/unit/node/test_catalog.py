"""The catalog: latest published version, sealed versions decrypted into locked-down
in-memory connections, shared per version."""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from tessera.node import vault
from tessera.node.catalog import DatasetCatalog, DatasetVersion
from tessera.node.ingest.manifest import Manifest, next_version, publish
from tessera.node.ingest.report import TableCounts
from tessera.schemas import DATASETS

POLICE = DATASETS["police"]


def publish_version(data: Path, rows: int) -> int:
    """Publish a police version of ``rows`` rows the way ingest does: tables built in
    an in-memory connection, handed to ``publish`` with a staging table beside them."""
    folder = data / "police"
    folder.mkdir(parents=True, exist_ok=True)
    version = next_version(folder)
    with duckdb.connect(":memory:") as con:
        for table in POLICE.tables:
            cols = ", ".join(f'"{c.name}" VARCHAR' for c in table.columns)
            con.execute(f'CREATE TABLE "{table.name}" ({cols})')
        first = POLICE.tables[0].columns[0].name
        con.execute(f"INSERT INTO incidents ({first}) SELECT 'P' || i FROM range({rows}) t(i)")
        con.execute("CREATE TABLE stage_incidents AS SELECT 'secret' AS x")
        manifest = Manifest(
            dataset="police",
            schema_version=POLICE.schema_version,
            version=version,
            content_sha256=f"{version:064x}",
            loaded_at="2026-11-22T12:00:00Z",
            tables={
                t.name: TableCounts(rows if t.name == "incidents" else 0, 0) for t in POLICE.tables
            },
        )
        publish(folder, con, manifest)
    return version


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for rows in (2, 3):
        publish_version(tmp_path / "data", rows)
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
    assert latest.path == data / "police" / "v2.sealed"
    assert len(latest.content_sha256) == 64
    assert [v.version for v in catalog.versions("police")] == [1, 2]
    assert catalog.datasets() == ["police"]
    assert catalog.latest("cin") is None


def test_a_new_ingest_is_picked_up_without_restart(
    tmp_path: Path, data: Path, catalog: DatasetCatalog
) -> None:
    before = catalog.latest("police")
    publish_version(data, 9)
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


def test_connections_cannot_touch_files_or_change_the_stored_version(
    tmp_path: Path, data: Path, catalog: DatasetCatalog
) -> None:
    latest = catalog.latest("police")
    assert latest is not None
    stored = latest.path.read_bytes()
    cur = catalog.connect(latest).cursor()
    try:
        secret = tmp_path / "secret.csv"
        secret.write_text("a\n1\n")
        with pytest.raises(duckdb.Error):
            cur.execute(f"SELECT * FROM read_csv('{secret}')")
        with pytest.raises(duckdb.Error):
            cur.execute(f"COPY incidents TO '{tmp_path / 'out.csv'}'")
        with pytest.raises(duckdb.Error):
            cur.execute("SET enable_external_access = true")
        # Never spills rows to a temporary folder on disk, and that cannot be changed.
        assert cur.execute("SELECT current_setting('temp_directory')").fetchall() == [("",)]
        with pytest.raises(duckdb.Error):
            cur.execute(f"SET temp_directory = '{tmp_path}'")
        with pytest.raises(duckdb.Error):
            cur.execute(f"ATTACH '{tmp_path / 'x.duckdb'}' AS x")
    finally:
        cur.close()
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.duckdb").exists()
    assert latest.path.read_bytes() == stored
    tables = {r[0] for r in catalog.connect(latest).cursor().execute("SHOW TABLES").fetchall()}
    assert "stage_incidents" not in tables  # only the manifest's tables are sealed
    # The database lives in memory only: a fresh catalog reads the sealed file again.
    with DatasetCatalog(data) as again:
        assert again.latest("police") == latest
        assert count(again.connect(latest)) == 3


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
        catalog.connect(replace(latest, path=tmp_path / "elsewhere.sealed"))
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


def test_versions_are_sealed_private_and_open_only_with_the_key(
    data: Path, catalog: DatasetCatalog
) -> None:
    latest = catalog.latest("police")
    assert latest is not None
    folder = data / "police"
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for name in os.listdir(folder):
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600, name
    assert sorted(n for n in os.listdir(folder) if not n.startswith(".")) == [
        "v1.json",
        "v1.sealed",
        "v2.json",
        "v2.sealed",
    ]
    with DatasetCatalog(data, vault.DataKey.generate()) as wrong:
        assert wrong.latest("police") == latest
        with pytest.raises(vault.VaultError, match="sealed under data key"):
            wrong.connect(latest)
    with DatasetCatalog(data, vault.default_key()) as right:
        assert right.latest("police") == latest
        assert count(right.connect(latest)) == 3


def test_a_version_renamed_to_another_number_does_not_open(data: Path) -> None:
    folder = data / "police"
    os.replace(folder / "v1.sealed", folder / "v2.sealed")  # v1's rows posing as v2
    with DatasetCatalog(data) as catalog:
        latest = catalog.latest("police")
        assert latest is not None and latest.version == 2
        with pytest.raises(vault.VaultError, match="does not open"):
            catalog.connect(latest)


def test_a_plaintext_version_from_before_encryption_is_refused(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = data / "police"
    (folder / "v3.json").write_bytes(
        (folder / "v2.json").read_bytes().replace(b'"version":2', b'"version":3')
    )
    with duckdb.connect(str(folder / "v3.duckdb")) as con:
        con.execute("CREATE TABLE incidents (person_id VARCHAR)")
    with DatasetCatalog(data) as catalog, caplog.at_level(logging.WARNING):
        latest = catalog.latest("police")
    assert latest is not None and latest.version == 2
    assert "unencrypted version from before encryption at rest" in caplog.text


def test_a_newer_version_releases_older_ones_without_breaking_their_queries(
    data: Path, catalog: DatasetCatalog
) -> None:
    v1, v2 = catalog.versions("police")
    old = catalog.connect(v1)
    running = old.cursor()  # a query on v1 is under way
    new = catalog.connect(v2)
    assert count(new) == 3
    assert running.execute("SELECT count(*) FROM incidents").fetchall() == [(2,)]
    running.close()
    again = catalog.connect(v1)  # decrypted again on demand, not the forgotten one
    assert again is not old and count(again) == 2
    assert catalog.connect(v2) is new  # the newest stays cached
