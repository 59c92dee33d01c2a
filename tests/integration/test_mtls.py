"""Mutual TLS against a real gRPC server: who gets in, and what the server sees."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tessera import tls

TIMEOUT = 10.0
WHO = "/tessera.test.Probe/WhoAmI"


@dataclass
class Server:
    port: int
    fed: tls.FederationCerts
    pki: Path
    calls: list[dict[str, list[bytes]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    pki = tmp_path / "pki"
    fed = tls.make_federation(
        pki,
        nodes=["council-a"],
        coordinator="coordinator",
        users=["alice"],
        organizations={"alice": "Analysts Ltd"},
    )
    state: list[Server] = []

    def who_am_i(request: bytes, context: Any) -> bytes:
        with state[0].lock:
            state[0].calls.append(dict(context.auth_context()))
        identity = tls.peer_identity(context)
        if identity is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client identity")
            raise AssertionError("abort raises")
        return identity.encode()

    probe = grpc.method_handlers_generic_handler(
        "tessera.test.Probe", {"WhoAmI": grpc.unary_unary_rpc_method_handler(who_am_i)}
    )
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[probe])
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), srv)
    port = srv.add_secure_port("127.0.0.1:0", fed.nodes["council-a"].load().server_credentials())
    assert port > 0
    srv.start()
    state.append(Server(port, fed, pki))
    try:
        yield state[0]
    finally:
        srv.stop(None).wait()


def who_am_i(server: Server, creds: Any, host: str = "127.0.0.1") -> str:
    with grpc.secure_channel(f"{host}:{server.port}", creds) as ch:
        grpc.channel_ready_future(ch).result(timeout=TIMEOUT)
        reply: bytes = ch.unary_unary(WHO)(b"", timeout=TIMEOUT)
        return reply.decode()


def health_check(server: Server, creds: Any) -> int:
    with grpc.secure_channel(f"127.0.0.1:{server.port}", creds) as ch:
        grpc.channel_ready_future(ch).result(timeout=TIMEOUT)
        stub = health_pb2_grpc.HealthStub(ch)
        status: int = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status
        return status


def rejected_code(server: Server, creds: Any) -> grpc.StatusCode:
    """The code a client sees when the handshake fails. No wait-for-ready: the first
    RPC triggers the connection and fails as soon as the handshake does."""
    with grpc.secure_channel(f"127.0.0.1:{server.port}", creds) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary(WHO)(b"", timeout=TIMEOUT)
        code: grpc.StatusCode = e.value.code()
        return code


def test_client_from_the_federation_is_identified_by_cn(server: Server) -> None:
    alice = server.fed.users["alice"].load().channel_credentials()
    assert who_am_i(server, alice) == "alice"
    # SNI / host-name check via the DNS SAN as well as the IP SAN.
    assert who_am_i(server, alice, host="localhost") == "alice"
    assert health_check(server, alice) == health_pb2.HealthCheckResponse.SERVING

    # A node certificate carries SANs; the identity is still its CN, not "localhost".
    node = server.fed.nodes["council-a"].load().channel_credentials()
    assert who_am_i(server, node) == "council-a"
    coordinator = tls.channel_credentials(*_paths(server.fed.coordinator))
    assert who_am_i(server, coordinator) == "coordinator"


def test_auth_context_keys(server: Server) -> None:
    """Pins what grpc exposes (documented in tessera/tls.py)."""
    who_am_i(server, server.fed.users["alice"].load().channel_credentials())
    who_am_i(server, server.fed.nodes["council-a"].load().channel_credentials())
    user, node = server.calls
    assert user["transport_security_type"] == [b"ssl"]
    assert user["security_level"] == [b"TSI_PRIVACY_AND_INTEGRITY"]
    assert user["x509_common_name"] == [b"alice"]
    assert user["x509_subject"] == [b"O=Analysts Ltd,CN=alice"]
    assert user["x509_pem_cert"][0].startswith(b"-----BEGIN CERTIFICATE-----")
    assert "x509_subject_alternative_name" not in user
    assert node["x509_common_name"] == [b"council-a"]
    # A node's certificate names the node first (tls.node_server_name), then the local names.
    sans = [b"council-a.node.tessera", b"localhost", b"127.0.0.1"]
    assert node["x509_subject_alternative_name"] == sans
    assert node["peer_dns"] == sans[:2] and node["peer_ip"] == [b"127.0.0.1"]


def _paths(files: tls.TlsFiles | None) -> tuple[Path, Path, Path]:
    assert files is not None
    return files.cert, files.key, files.ca


def _other_ca_client(server: Server) -> Any:
    other = tls.make_ca("Other CA", server.pki / "other")
    mallory = tls.make_certificate(other, "alice", server.pki / "other")  # same CN, wrong CA
    # Mallory trusts our CA so that the server's certificate is accepted: only her own
    # certificate is wrong.
    return tls.TlsFiles(mallory.cert, mallory.key, server.fed.ca.cert_path).load()


def _bad_clients(server: Server, kind: str) -> Any:
    ca = server.fed.ca
    now = datetime.now(UTC)
    if kind == "other_ca":
        return _other_ca_client(server).channel_credentials()
    if kind == "no_certificate":
        return grpc.ssl_channel_credentials(root_certificates=ca.cert_path.read_bytes())
    if kind == "expired":
        files = tls.make_certificate(
            ca,
            "alice",
            server.pki / "expired",
            not_before=now - timedelta(days=30),
            not_after=now - timedelta(days=1),
        )
        return files.load().channel_credentials()
    if kind == "not_yet_valid":
        files = tls.make_certificate(
            ca,
            "alice",
            server.pki / "future",
            not_before=now + timedelta(days=1),
            not_after=now + timedelta(days=30),
        )
        return files.load().channel_credentials()
    if kind == "server_only_eku":
        files = tls.make_certificate(
            ca, "alice", server.pki / "eku", server_names=["localhost"], client=False, server=True
        )
        return files.load().channel_credentials()
    raise AssertionError(kind)


# Observed with grpcio 1.85.1: every handshake rejection reaches the client as
# UNAVAILABLE ("failed to connect to all addresses ... Socket closed"); the server logs
# the reason (CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate /
# certificate has expired / unsupported certificate purpose; PEER_DID_NOT_RETURN_A_
# CERTIFICATE). The servicer never runs, so it cannot leak anything.
@pytest.mark.parametrize(
    "kind", ["other_ca", "no_certificate", "expired", "not_yet_valid", "server_only_eku"]
)
def test_bad_client_certificates_are_refused(server: Server, kind: str) -> None:
    creds = _bad_clients(server, kind)
    assert rejected_code(server, creds) == grpc.StatusCode.UNAVAILABLE
    assert server.calls == []
    # The server keeps serving good clients.
    alice = server.fed.users["alice"].load().channel_credentials()
    assert who_am_i(server, alice) == "alice"
    assert health_check(server, alice) == health_pb2.HealthCheckResponse.SERVING


def test_client_refuses_a_server_from_another_ca(server: Server, tmp_path: Path) -> None:
    # Alice trusts only another CA: the server's certificate does not verify for her.
    other = tls.make_ca("Other CA", tmp_path / "other")
    files = server.fed.users["alice"]
    creds = tls.TlsFiles(files.cert, files.key, other.cert_path).load().channel_credentials()
    assert rejected_code(server, creds) == grpc.StatusCode.UNAVAILABLE
    assert server.calls == []


def test_plaintext_client_is_refused(server: Server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary(WHO)(b"", timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.calls == []
