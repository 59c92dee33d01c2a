"""Pinned node identity: a rogue node holding a valid federation certificate issued to
another name, configured to call itself Leeds and listening where the coordinator
expects Leeds, is refused in the TLS handshake and never receives a request."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tessera.config import TlsConfig
from tessera.node.main import start
from tessera.tls import node_server_name
from tests.support import coordinator as region_lib
from tests.support import federation as fedlib

T1 = "cla-by-age-and-placement"
P1 = {"on_date": "2025-03-31"}


@pytest.fixture
def region(tmp_path: Path) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def _sans(cert: Path) -> list[str]:
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    ext = c.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(v) for v in ext.value.get_values_for_type(x509.DNSName)]


def test_each_node_certificate_names_its_node(region: region_lib.Region) -> None:
    names = {org: _sans(region.fed.tls(org).cert) for org in region_lib.COUNCILS}
    for org, sans in names.items():
        assert sans[0] == node_server_name(org) == f"{org.lower()}.node.tessera"
        others = {node_server_name(o) for o in region_lib.COUNCILS if o != org}
        assert not others & set(sans)


def test_a_rogue_node_with_another_nodes_certificate_is_refused(
    region: region_lib.Region,
) -> None:
    fed = region.fed
    real = fedlib.node_config(fed, "Leeds", budgets=region_lib.BUDGETS)
    base = fed.root / "rogue"
    shutil.copytree(real.data_dir, base / "data")
    wakefield = fed.tls("Wakefield")  # valid, from the federation CA, but not Leeds's
    rogue_cfg = dataclasses.replace(
        real,
        state_dir=base / "state",
        data_dir=base / "data",
        tls=TlsConfig(wakefield.cert, wakefield.key, wakefield.ca),
    )
    rogue = start(rogue_cfg)
    try:
        ports: dict[str, int | str] = {o: n.port for o, n in region.nodes.items()}
        ports["Leeds"] = rogue.port
        region.cfg = region_lib.coordinator_config(fed, ports)
        region.restart_coordinator()

        analyst = region.analyst()
        region_lib.published(region, T1, quorum=2)
        result = analyst.run_query(T1, P1, nodes=list(region_lib.COUNCILS))
        # Released from the two genuine nodes; the impostor is named as unreachable.
        assert result.released
        assert sorted(result.nodes_answered) == ["Bradford", "Wakefield"]
        assert result.nodes_missing["Leeds"].startswith("UNAVAILABLE")
        leeds = next(n for n in analyst.nodes() if n.organisation == "Leeds")
        assert leeds.health == "NOT_SERVING"
        # The handshake failed before any call: the rogue saw no request at all.
        assert rogue.service.ledger.audit_log.last() is None
    finally:
        rogue.stop(0)


def test_a_client_talking_to_a_node_directly_pins_it_too(region: region_lib.Region) -> None:
    import grpc

    from tessera.demo.drills import NodeDriller
    from tessera.wire.v1 import node_pb2

    tls = region.fed.tls("coordinator")
    bradford = region.nodes["Bradford"].port
    right = NodeDriller(tls, bradford, "Bradford", "ssda903", "Bradford")
    wrong = NodeDriller(tls, bradford, "Leeds", "ssda903", "Leeds")
    try:
        reply = right.stub.Describe(node_pb2.DescribeRequest(), timeout=10)
        assert reply.organisation == "Bradford"
        with pytest.raises(grpc.RpcError) as e:
            wrong.stub.Describe(node_pb2.DescribeRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        right.close()
        wrong.close()
