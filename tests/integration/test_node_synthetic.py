"""A node holding a synthetic council's data answers reference templates 1 and 2,
and serves gRPC health checking and reflection beside NodeService."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tessera import schemas
from tessera.node.ingest import ingest_dataset
from tessera.node.main import start
from tessera.synth import generate_region
from tests.support import federation as fedlib


@pytest.fixture
def leeds(fed: fedlib.Federation, tmp_path: Path) -> Any:
    region = generate_region(tmp_path / "region", scale=0.1, seed=7)
    cfg = fedlib.node_config(fed, "Leeds")
    org = region.organisation("leeds")
    for ds_name in ("ssda903", "cin"):
        ds = schemas.dataset(ds_name)
        assert ds is not None
        tables = org.dataset(ds_name).tables
        files = {t: [tmp_path / "region" / f.path] for t, f in tables.items()}
        report = ingest_dataset(ds, files, cfg.data_dir, datetime.now(UTC))
        assert report.rows_rejected == 0
    node = start(cfg)
    yield node
    node.stop(0)


def test_synthetic_council_answers_templates_1_and_2(fed: fedlib.Federation, leeds: Any) -> None:
    stub = fedlib.node_stub(fed, leeds.port)
    t1 = fedlib.sign_template(fed.template("cla-by-age-and-placement"), fed.approvers[:2])
    a1 = stub.Execute(fedlib.execute_request(fed, t1, {"on_date": "2026-03-31"})).answer
    assert len(a1.cells) == 24 and a1.cost.epsilon == pytest.approx(0.5)
    # About 120 children in care at this scale; the noise on the total has an SD near 12.
    assert sum(a1.measures[0].values) > 40

    t2 = fedlib.sign_template(fed.template("referrals-by-need-and-age"), fed.approvers[:2])
    params = {"period_start": "2025-04-01", "period_end": "2026-03-31"}
    a2 = stub.Execute(fedlib.execute_request(fed, t2, params)).answer
    assert len(a2.cells) == 60 and a2.cost.rho == pytest.approx(0.125)  # 10 needs x 6 ages
    again = stub.Execute(fedlib.execute_request(fed, t2, params)).answer
    assert again.from_cache and list(again.measures[0].values) == list(a2.measures[0].values)


def test_health_and_reflection_are_served(fed: fedlib.Federation, leeds: Any) -> None:
    channel = fed.channel("coordinator", leeds.port)
    status = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="tessera.wire.v1.NodeService")
    )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert "tessera.wire.v1.NodeService" in names
    assert "grpc.health.v1.Health" in names
    channel.close()
