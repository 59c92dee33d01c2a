"""Dataset versions: numbering, manifests, atomic publication, crash leftovers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tessera import canonical
from tessera.node.catalog import DatasetCatalog
from tessera.node.ingest import IngestError, ingest_dataset
from tessera.node.ingest import manifest as manifest_mod
from tessera.schemas import DATASETS
from tests.unit.node.helpers import NOW, valid_file_set

POLICE = DATASETS["police"]


def test_versions_increment_and_manifest_is_complete(tmp_path: Path) -> None:
    files = valid_file_set(tmp_path / "src", POLICE, rows=3)
    data = tmp_path / "data"
    assert [ingest_dataset(POLICE, files, data, NOW).version for _ in range(3)] == [1, 2, 3]
    assert sorted(os.listdir(data / "police")) == [
        ".ingest.lock",
        "v1.duckdb",
        "v1.json",
        "v2.duckdb",
        "v2.json",
        "v3.duckdb",
        "v3.json",
    ]
    src = files["incidents"][0]
    expected_sha = hashlib.sha256(
        canonical.encode(
            [["incidents", "incidents.csv", hashlib.sha256(src.read_bytes()).hexdigest()]]
        )
    ).hexdigest()
    assert json.loads((data / "police" / "v3.json").read_bytes()) == {
        "dataset": "police",
        "schema_version": 1,
        "version": 3,
        "content_sha256": expected_sha,
        "loaded_at": "2026-11-22T12:00:00.000000Z",
        "tables": {"incidents": {"rows_loaded": 3, "rows_rejected": 0}},
    }


def test_published_files_are_read_only(tmp_path: Path) -> None:
    ingest_dataset(POLICE, valid_file_set(tmp_path / "src", POLICE), tmp_path / "data", NOW)
    for name in ("v1.duckdb", "v1.json"):
        assert os.stat(tmp_path / "data" / "police" / name).st_mode & 0o222 == 0


def test_content_hash_depends_on_content_not_location(tmp_path: Path) -> None:
    a = valid_file_set(tmp_path / "a", POLICE, rows=3)
    b = valid_file_set(tmp_path / "b", POLICE, rows=3)
    c = valid_file_set(tmp_path / "c", POLICE, rows=4)
    sha = [ingest_dataset(POLICE, f, tmp_path / "data", NOW).content_sha256 for f in (a, b, c)]
    assert sha[0] == sha[1] != sha[2]


def _crash_before_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make publication die after the database is in place, before the manifest is."""
    real = manifest_mod._read_only
    calls = []

    def read_only(path: Path) -> None:
        calls.append(path)
        if len(calls) == 2:  # the first call is the database, the second the manifest
            raise OSError("simulated crash")
        real(path)

    monkeypatch.setattr(manifest_mod, "_read_only", read_only)


def test_a_version_without_manifest_is_invisible_and_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = valid_file_set(tmp_path / "src", POLICE)
    data = tmp_path / "data"
    ingest_dataset(POLICE, files, data, NOW)
    with monkeypatch.context() as m:
        _crash_before_manifest(m)
        with pytest.raises(OSError, match="simulated crash"):
            ingest_dataset(POLICE, files, data, NOW)
    left = set(os.listdir(data / "police"))
    assert "v2.duckdb" in left and "v2.json" not in left
    assert not [n for n in left if n.startswith(".ingest-")]  # work dir removed anyway

    with DatasetCatalog(data) as catalog:
        latest = catalog.latest("police")
        assert latest is not None and latest.version == 1
        assert [v.version for v in catalog.versions("police")] == [1]

    # The next ingest clears the never-published leftovers and takes the number.
    assert ingest_dataset(POLICE, files, data, NOW).version == 2
    assert sorted(n for n in os.listdir(data / "police") if not n.startswith(".ingest.")) == [
        "v1.duckdb",
        "v1.json",
        "v2.duckdb",
        "v2.json",
    ]


def test_a_published_number_is_never_reused(tmp_path: Path) -> None:
    files = valid_file_set(tmp_path / "src", POLICE)
    data = tmp_path / "data"
    ingest_dataset(POLICE, files, data, NOW)
    ingest_dataset(POLICE, files, data, NOW)
    (data / "police" / "v2.duckdb").unlink()  # an operator deleted a database by hand
    assert ingest_dataset(POLICE, files, data, NOW).version == 3


def test_a_second_concurrent_ingest_is_refused(tmp_path: Path) -> None:
    files = valid_file_set(tmp_path / "src", POLICE)
    (tmp_path / "data" / "police").mkdir(parents=True)
    with manifest_mod.ingest_lock(tmp_path / "data" / "police"):
        with pytest.raises(IngestError, match="in progress"):
            ingest_dataset(POLICE, files, tmp_path / "data", NOW)
    assert ingest_dataset(POLICE, files, tmp_path / "data", NOW).version == 1


def test_a_failed_ingest_leaves_no_trace(tmp_path: Path) -> None:
    files = valid_file_set(tmp_path / "src", POLICE)
    data = tmp_path / "data"
    ingest_dataset(POLICE, files, data, NOW)
    huge = tmp_path / "huge.csv"
    huge.write_text("person_id,incident_date,incident_type\n" + '"' + "x" * 200_000 + '",,\n')
    with pytest.raises(IngestError):
        ingest_dataset(POLICE, {"incidents": [huge]}, data, NOW)
    assert sorted(os.listdir(data / "police")) == [".ingest.lock", "v1.duckdb", "v1.json"]


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"dataset": "police"}',
        '{"dataset": "cin", "schema_version": 1, "version": 1, "content_sha256": "'
        + "a" * 64
        + '", "loaded_at": "x", "tables": {}}',
        '{"dataset": "police", "schema_version": 1, "version": 2, "content_sha256": "'
        + "a" * 64
        + '", "loaded_at": "x", "tables": {}}',
        '{"dataset": "police", "schema_version": 1, "version": 1, "content_sha256": "abc", '
        '"loaded_at": "x", "tables": {}}',
    ],
)
def test_invalid_manifests_are_rejected(tmp_path: Path, text: str) -> None:
    path = tmp_path / "police" / "v1.json"
    path.parent.mkdir()
    path.write_text(text)
    assert manifest_mod.read_manifest(path) is None
