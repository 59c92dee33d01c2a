"""The catalog's frames: built once per (version, source, order key), shared, replaced
by a newer version's, and standing in for the version's in-memory DuckDB copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.node.catalog import DatasetCatalog
from tests.unit.node.test_catalog import count, publish_version

KEY_A = bytes(range(32))
KEY_B = bytes(32)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[DatasetCatalog]:
    for rows in (2, 3):
        publish_version(tmp_path / "data", rows)
    with DatasetCatalog(tmp_path / "data") as c:
        yield c


def test_a_frame_is_built_once_per_version_source_and_key(catalog: DatasetCatalog) -> None:
    v = catalog.latest("police")
    assert v is not None
    frame = catalog.frame(v, "incidents", KEY_A)
    assert frame is not None and frame.n == 3 and frame.n_units == 3
    assert catalog.frame(v, "incidents", KEY_A) is frame
    # Another node secret orders the records differently: a frame of its own.
    other = catalog.frame(v, "incidents", KEY_B)
    assert other is not None and other is not frame


def test_building_a_frame_forgets_the_connection(catalog: DatasetCatalog) -> None:
    v = catalog.latest("police")
    assert v is not None
    before = catalog.connect(v)
    assert catalog.connect(v) is before  # shared while no frame is built
    assert catalog.frame(v, "incidents", KEY_A) is not None
    again = catalog.connect(v)  # decrypted afresh for the compiler's fallback
    assert again is not before
    assert count(again) == 3 and count(before) == 3  # the old one still works for its users


def test_a_newer_version_replaces_older_frames(catalog: DatasetCatalog) -> None:
    v1, v2 = catalog.versions("police")
    old = catalog.frame(v1, "incidents", KEY_A)
    assert old is not None and old.n == 2
    assert catalog.frame(v2, "incidents", KEY_A) is not None
    rebuilt = catalog.frame(v1, "incidents", KEY_A)
    assert rebuilt is not None and rebuilt is not old and rebuilt.n == 2


def test_a_closed_catalog_builds_no_frames(catalog: DatasetCatalog) -> None:
    v = catalog.latest("police")
    assert v is not None
    catalog.close()
    with pytest.raises(RuntimeError, match="closed"):
        catalog.frame(v, "incidents", KEY_A)


def test_warm_up_builds_the_frames_the_first_query_uses(tmp_path: Path) -> None:
    publish_version(tmp_path / "data", 4)
    with DatasetCatalog(tmp_path / "data") as catalog:
        catalog.warm(["police"], KEY_A, every=None)
        v = catalog.latest("police")
        assert v is not None
        # A query arriving during the build waits for it: one build either way.
        frame = catalog.frame(v, "incidents", KEY_A)
        assert catalog.wait_warm(timeout=60) and not catalog.warming
        assert frame is not None and frame.n == 4
        assert catalog.built == 1 and catalog.streamed == 1
        assert catalog.frame(v, "incidents", KEY_A) is frame


def test_warm_up_builds_a_newer_versions_frames(tmp_path: Path) -> None:
    publish_version(tmp_path / "data", 2)
    with DatasetCatalog(tmp_path / "data") as catalog:
        thread = catalog.warm(["police", "health"], KEY_A, every=None)
        thread.join(timeout=60)
        assert not thread.is_alive() and catalog.built == 1
        publish_version(tmp_path / "data", 5)
        thread = catalog.warm(["police"], KEY_A, every=None)  # as the periodic pass does
        thread.join(timeout=60)
        v = catalog.latest("police")
        assert v is not None and v.version == 2 and catalog.built == 2
        frame = catalog.frame(v, "incidents", KEY_A)
        assert frame is not None and frame.n == 5 and catalog.built == 2


def test_a_closed_catalog_stops_warming(tmp_path: Path) -> None:
    publish_version(tmp_path / "data", 2)
    catalog = DatasetCatalog(tmp_path / "data")
    catalog.close()
    thread = catalog.warm(["police"], KEY_A)
    thread.join(timeout=60)
    assert not thread.is_alive() and catalog.built == 0
