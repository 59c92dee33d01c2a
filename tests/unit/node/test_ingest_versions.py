"""Dataset versions: numbering, manifests, atomic publication, crash leftovers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tessera.node.catalog import DatasetCatalog
from tessera.node.ingest import IngestError, ingest_dataset
from tessera.node.ingest import manifest as manifest_mod
from tessera.node.ingest import pipeline as pipeline_mod
from tessera.schemas import DATASETS
from tests.unit.node.helpers import NOW, valid_file_set

POLICE = DATASETS["police"]


def _files(tmp_path: Path, rows: int) -> dict[str, list[Path]]:
    return valid_file_set(tmp_path / f"src{rows}", POLICE, rows=rows)


def test_versions_increment_and_manifest_is_complete(tmp_path: Path) -> None:
    data = tmp_path / "data"
    reports = [ingest_dataset(POLICE, _files(tmp_path, n), data, NOW) for n in (3, 4, 5)]
    assert [r.version for r in reports] == [1, 2, 3]
    assert [r.outcome for r in reports] == ["written"] * 3
    assert sorted(os.listdir(data / "police")) == [
        ".ingest.lock",
        "v1.json",
        "v1.sealed",
        "v2.json",
        "v2.sealed",
        "v3.json",
        "v3.sealed",
    ]
    assert json.loads((data / "police" / "v3.json").read_bytes()) == {
        "dataset": "police",
        "schema_version": 1,
        "version": 3,
        "content_sha256": reports[2].content_sha256,
        "loaded_at": "2026-11-22T12:00:00.000000Z",
        "tables": {"incidents": {"rows_loaded": 5, "rows_rejected": 0, "duplicates_dropped": 0}},
        "children_without_header": {},
    }


def test_published_files_are_private(tmp_path: Path) -> None:
    ingest_dataset(POLICE, valid_file_set(tmp_path / "src", POLICE), tmp_path / "data", NOW)
    for name in ("v1.sealed", "v1.json"):
        assert os.stat(tmp_path / "data" / "police" / name).st_mode & 0o077 == 0


def test_content_hash_depends_on_content_not_location(tmp_path: Path) -> None:
    a = valid_file_set(tmp_path / "a", POLICE, rows=3)
    b = valid_file_set(tmp_path / "b", POLICE, rows=3)
    c = valid_file_set(tmp_path / "c", POLICE, rows=4)
    sha = [
        ingest_dataset(POLICE, f, tmp_path / f"data{i}", NOW).content_sha256
        for i, f in enumerate((a, b, c))
    ]
    assert sha[0] == sha[1] != sha[2]


def test_identical_content_is_the_same_version(tmp_path: Path) -> None:
    """Re-ingesting the same reconciled content publishes nothing and exits cleanly,
    whether the bytes are identical or only the content (another date format, rows
    in another order, a CRLF and BOM spreadsheet export)."""
    data = tmp_path / "data"
    first = _files(tmp_path, 6)
    assert ingest_dataset(POLICE, first, data, NOW).version == 1
    again = ingest_dataset(POLICE, first, data, NOW)
    assert (again.outcome, again.version) == ("unchanged", 1)
    assert "unchanged: same content as version 1" in again.render()
    src = first["incidents"][0]
    lines = src.read_text().splitlines()
    head, rows = lines[0], lines[1:]
    reworded = []
    for row in reversed(rows):
        person, nhs, when, kind = row.split(",")
        y, m, d = when.split("-")
        reworded.append(f"{person} ,{nhs},{d}/{m}/{y[2:]},{kind.lower()}")
    other = tmp_path / "other" / "incidents.csv"
    other.parent.mkdir()
    other.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join([head, *reworded]) + "\r\n").encode())
    same = ingest_dataset(POLICE, {"incidents": [other]}, data, NOW)
    assert (same.outcome, same.version) == ("unchanged", 1)
    assert same.content_sha256 == again.content_sha256
    assert sorted(n for n in os.listdir(data / "police") if n.startswith("v")) == [
        "v1.json",
        "v1.sealed",
    ]
    assert ingest_dataset(POLICE, _files(tmp_path, 7), data, NOW).version == 2


def test_dry_run_publishes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    report = ingest_dataset(POLICE, _files(tmp_path, 3), data, NOW, dry_run=True)
    assert report.outcome == "dry run"
    assert "dry run, nothing published" in report.render()
    assert not [n for n in os.listdir(data / "police") if n.startswith("v")]


def _crash_before_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make publication die after the sealed version is in place, before the manifest is."""

    def manifest_path(dataset_dir: Path, version: int) -> Path:
        raise OSError("simulated crash")

    monkeypatch.setattr(manifest_mod, "manifest_path", manifest_path)


def test_a_version_without_manifest_is_invisible_and_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    ingest_dataset(POLICE, _files(tmp_path, 3), data, NOW)
    with monkeypatch.context() as m:
        _crash_before_manifest(m)
        with pytest.raises(OSError, match="simulated crash"):
            ingest_dataset(POLICE, _files(tmp_path, 4), data, NOW)
    left = set(os.listdir(data / "police"))
    assert "v2.sealed" in left and "v2.json" not in left

    with DatasetCatalog(data) as catalog:
        latest = catalog.latest("police")
        assert latest is not None and latest.version == 1
        assert [v.version for v in catalog.versions("police")] == [1]

    # The next ingest clears the never-published leftovers and takes the number.
    assert ingest_dataset(POLICE, _files(tmp_path, 4), data, NOW).version == 2
    assert sorted(n for n in os.listdir(data / "police") if not n.startswith(".ingest.")) == [
        "v1.json",
        "v1.sealed",
        "v2.json",
        "v2.sealed",
    ]


def test_a_published_number_is_never_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ingest_dataset(POLICE, _files(tmp_path, 3), data, NOW)
    ingest_dataset(POLICE, _files(tmp_path, 4), data, NOW)
    (data / "police" / "v2.sealed").unlink()  # an operator deleted a version by hand
    assert ingest_dataset(POLICE, _files(tmp_path, 5), data, NOW).version == 3


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
    assert sorted(os.listdir(data / "police")) == [".ingest.lock", "v1.json", "v1.sealed"]


def test_no_record_level_file_is_written_while_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version is built in memory: until publication seals it, ingest creates
    no file at all under the data directory (or anywhere DuckDB might spill)."""
    data = tmp_path / "data"
    (data / "police").mkdir(parents=True)
    before = set(os.listdir(data / "police"))
    seen: list[set[str]] = []
    real = manifest_mod.publish

    def publish(*args: object, **kwargs: object) -> None:
        seen.append(set(os.listdir(data / "police")))
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline_mod, "publish", publish)
    ingest_dataset(POLICE, _files(tmp_path, 50), data, NOW)
    assert seen == [before | {".ingest.lock"}]


def test_the_build_database_never_spills_to_disk() -> None:
    from tessera.node.ingest.build import DatabaseBuilder

    builder = DatabaseBuilder(POLICE)
    try:
        con = builder.connection
        assert con.execute("SELECT current_setting('temp_directory')").fetchall() == [("",)]
        assert con.execute("SELECT current_database()").fetchall() == [("memory",)]
    finally:
        builder.close()


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
