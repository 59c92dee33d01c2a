"""A server listens where it is told or not at all: a held port and an invalid port
are errors, for the serving layer and for the `tessera node serve` process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from tessera import config, serving, tls
from tessera.observability import PortError
from tests.support import federation as fedlib

TESSERA = (sys.executable, "-c", "from tessera.cli.main import entry; entry()")


@pytest.fixture
def pki(tmp_path: Path) -> tls.FederationCerts:
    return tls.make_federation(
        tmp_path / "pki", nodes=["council-a"], coordinator="coordinator", users=["alice"]
    )


def _serve(pki: tls.FederationCerts, address: str) -> serving.Running:
    return serving.serve(
        address=address,
        tls=pki.nodes["council-a"].load(),
        register=lambda s: None,
        service_names=["tessera.test.Nothing"],
        max_message_bytes=1 << 20,
        max_workers=2,
    )


def test_a_port_another_grpc_server_holds_is_refused(pki: tls.FederationCerts) -> None:
    first = _serve(pki, "127.0.0.1:0")
    try:
        with pytest.raises(PortError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            _serve(pki, f"127.0.0.1:{first.port}")
        # The first server is untouched and still serves.
        assert _health(pki, first.port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        first.stop(0)


def test_a_port_a_plain_socket_holds_is_refused(pki: tls.FederationCerts) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(PortError, match="in use"):
            _serve(pki, f"127.0.0.1:{s.getsockname()[1]}")


@pytest.mark.parametrize(
    "address", ["127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1:http", "127.0.0.1", ":50051"]
)
def test_an_invalid_listen_address_is_refused(pki: tls.FederationCerts, address: str) -> None:
    with pytest.raises(PortError, match="listen: "):
        _serve(pki, address)


def _health(pki: tls.FederationCerts, port: int) -> int:
    creds = pki.users["alice"].load().channel_credentials()
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status)


def test_reflection_answers_v1_and_v1alpha_clients(pki: tls.FederationCerts) -> None:
    running = _serve(pki, "127.0.0.1:0")
    creds = pki.users["alice"].load().channel_credentials()
    try:
        with grpc.secure_channel(f"localhost:{running.port}", creds) as ch:
            for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
                call = ch.stream_stream(
                    f"/{package}.ServerReflection/ServerReflectionInfo",
                    request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                    response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
                )
                replies = list(
                    call(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                    )
                )
                names = {s.name for s in replies[0].list_services_response.service}
                assert "tessera.test.Nothing" in names
                assert {"grpc.reflection.v1.ServerReflection", "grpc.health.v1.Health"} <= names
    finally:
        running.stop(0)


# -- the node process --------------------------------------------------------------------


@pytest.fixture
def node_config_file(tmp_path: Path) -> Iterator[Path]:
    fed = fedlib.make(tmp_path)
    cfg = fedlib.node_config(fed, "Leeds")
    path = tmp_path / "node.toml"
    path.write_text(config.dump(cfg))
    yield path


def _start(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*TESSERA, "node", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.communicate(timeout=30)


def test_a_second_node_on_the_same_port_and_ledger_exits_2(node_config_file: Path) -> None:
    first = _start(node_config_file)
    try:
        assert first.stdout is not None
        port = json.loads(first.stdout.readline())["port"]
        text = node_config_file.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"')
        second_path = node_config_file.with_name("second.toml")
        second_path.write_text(text)
        second = subprocess.run(
            [*TESSERA, "node", "serve", "--config", str(second_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert "ready" not in second.stdout
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
        assert "Traceback" not in second.stderr
        assert 1 <= len(second.stderr.strip().splitlines()) <= 2, second.stderr
        assert first.poll() is None  # the first node serves on
    finally:
        _stop(first)


def test_an_invalid_port_in_the_node_config_exits_2(node_config_file: Path) -> None:
    path = node_config_file
    path.write_text(path.read_text().replace('"127.0.0.1:0"', '"127.0.0.1:99999"'))
    out = subprocess.run(
        [*TESSERA, "node", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2
    assert "listen" in lines[0] and "99999" in lines[0]
