"""The content-hash guessing attack fails: analysts never see a content hash.

The audit's attack: an analyst who knows every record but one hashes guesses for the
last one and compares them with the node's published content hash. Here the analyst
rebuilds the hash exactly as ingest does, for candidates that include the truth (and
the truth's hash is the node's own, so the attack would have worked against a hash
on the wire), then looks for any of them, whole or in part, in everything the
coordinator shows an analyst. Nothing matches: analysts see only an opaque version
identifier keyed with the node's secret, which differs between two nodes holding
identical data and is stable across a content-identical re-ingest.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tessera import schemas
from tessera.node.catalog import DatasetCatalog
from tessera.node.ingest import ingest_dataset
from tessera.wire.v1 import coordinator_pb2, coordinator_pb2_grpc
from tests.support import coordinator as region_lib
from tests.support import federation as fedlib

T2 = "referrals-by-need-and-age"
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}
LAST = "K3,2024-12-01,1,,\n"  # the one record the analyst does not know


@pytest.fixture
def region(tmp_path: Path) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def _candidate_hash(root: Path, i: int, last_line: str) -> str:
    """What ingest would publish as the content hash if the last child were `last_line`."""
    folder = root / f"guess-{i}"
    sources = fedlib.write_council_files(folder)
    text = (folder / "children.csv").read_text()
    (folder / "children.csv").write_text(text.replace(LAST, last_line))
    ds = schemas.dataset("cin")
    assert ds is not None
    data = root / f"guess-data-{i}"
    ingest_dataset(ds, sources["cin"], data, datetime(2026, 4, 1, tzinfo=UTC))
    with DatasetCatalog(data) as catalog:
        v = catalog.latest("cin")
        assert v is not None
        return v.content_sha256


def _everything_an_analyst_sees(region: region_lib.Region) -> str:
    analyst = region.analyst()
    digest = region_lib.published(region, T2)
    analyst.run_query(digest, P2)
    stub: Any = coordinator_pb2_grpc.CoordinatorServiceStub(
        region.fed.channel(region_lib.ANALYST, region.coordinator.port)
    )
    replies = [
        stub.GetBudgets(coordinator_pb2.GetBudgetsRequest()),
        stub.ListNodes(coordinator_pb2.ListNodesRequest()),
        stub.ListQueries(coordinator_pb2.ListQueriesRequest()),
        stub.ListTemplates(coordinator_pb2.ListTemplatesRequest()),
    ]
    return "\n".join(str(r) + r.SerializeToString().hex() for r in replies)


def test_hashing_guesses_for_the_last_record_finds_nothing(
    region: region_lib.Region, tmp_path: Path
) -> None:
    guesses = [LAST, "K3,2024-11-30,1,,\n", "K3,2024-12-01,2,,\n", "K3,2023-12-01,1,,\n"]
    hashes = [_candidate_hash(tmp_path, i, g) for i, g in enumerate(guesses)]
    node_hash = region.nodes["Leeds"].service.catalog.latest("cin").content_sha256
    assert hashes[0] == node_hash  # the right guess does reproduce the node's hash
    assert len(set(hashes)) == len(hashes)
    seen = _everything_an_analyst_sees(region).lower()
    for h in hashes:
        for start in range(0, 64 - 12, 4):  # nor any 12-digit piece of one
            assert h[start : start + 12] not in seen
    budgets = region.analyst().budgets()
    ids = {n.organisation: {d.name: d.version_id for d in n.datasets} for n in budgets}
    cin_ids = [ids[org]["cin"] for org in sorted(ids)]
    assert all(len(v) == 32 for v in cin_ids)
    # Three councils hold byte-identical data; their identifiers still differ.
    assert len(set(cin_ids)) == len(cin_ids)
    assert not set(cin_ids) & {h[:32] for h in hashes}


def test_a_content_identical_reingest_keeps_the_version_identifier(
    region: region_lib.Region, tmp_path: Path
) -> None:
    before = {d.name: d.version_id for d in region.analyst().budgets()[0].datasets}
    org = region.analyst().budgets()[0].organisation
    cfg = region.nodes[org].service.cfg
    folder = tmp_path / "again"
    sources = fedlib.write_council_files(folder)
    ds = schemas.dataset("cin")
    assert ds is not None
    ingest_dataset(ds, sources["cin"], cfg.data_dir, datetime(2026, 6, 1, tzinfo=UTC))
    after = {d.name: d.version_id for d in region.analyst().budgets()[0].datasets}
    assert after == before
    shutil.rmtree(folder)
