"""Certificates an operator must act on: one near expiry is warned of at start and in
Describe, and a renewed one is served without a restart, the audit chain intact."""

from __future__ import annotations

import logging
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from tessera import audit, tls
from tessera.node.main import start
from tessera.wire.v1 import node_pb2
from tests.support import federation as fedlib


def _reissue(fed: fedlib.Federation, name: str, days: int) -> tls.TlsFiles:
    """What `tessera certs` does for a node: same CN and names, a new key and window."""
    now = datetime.now(UTC)
    return tls.make_certificate(
        fed.certs.ca,
        name,
        fed.root / "certs",
        server_names=(tls.node_server_name(name), *tls.LOCAL_SERVER_NAMES),
        client=True,
        server=True,
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=days),
    )


def _served_certificate(fed: fedlib.Federation, port: int) -> x509.Certificate:
    """The certificate the server presents on a fresh handshake (as the coordinator)."""
    me = fed.tls("coordinator")
    ctx = ssl.create_default_context(cafile=str(me.ca))
    ctx.load_cert_chain(str(me.cert), str(me.key))
    ctx.set_alpn_protocols(["h2"])
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_certificate_near_expiry_is_warned_of_at_start_and_in_describe(
    fed: fedlib.Federation, caplog: pytest.LogCaptureFixture
) -> None:
    _reissue(fed, "Leeds", days=10)
    cfg = fedlib.node_config(fed, "Leeds")
    with caplog.at_level(logging.WARNING, logger="tessera.node"):
        node = start(cfg)
    try:
        warned = [r.getMessage() for r in caplog.records if r.name == "tessera.node"]
        assert any("tls.cert" in w and "expires on" in w and "renew" in w for w in warned)
        reply = fedlib.node_stub(fed, node.port).Describe(node_pb2.DescribeRequest())
        assert len(reply.warnings) == 1
        assert "tls.cert" in reply.warnings[0] and "expires on" in reply.warnings[0]
        assert str(cfg.tls.cert) not in reply.warnings[0]  # no file paths over the wire
    finally:
        node.stop(0)


def test_a_healthy_certificate_warns_of_nothing(fed: fedlib.Federation) -> None:
    node = start(fedlib.node_config(fed, "Leeds"))
    try:
        reply = fedlib.node_stub(fed, node.port).Describe(node_pb2.DescribeRequest())
        assert list(reply.warnings) == []
    finally:
        node.stop(0)


def test_a_renewed_certificate_is_served_without_a_restart(fed: fedlib.Federation) -> None:
    old = _reissue(fed, "Leeds", days=10)
    cfg = fedlib.node_config(fed, "Leeds")
    fedlib.ingest_council(fed, cfg)
    node = start(cfg)
    try:
        first = _served_certificate(fed, node.port)
        assert (
            first.serial_number
            == x509.load_pem_x509_certificate(old.cert.read_bytes()).serial_number
        )
        stub = fedlib.node_stub(fed, node.port)
        signed = fedlib.sign_template(fed.template("cla-by-age-and-placement"), fed.approvers[:2])
        before = stub.Execute(fedlib.execute_request(fed, signed, {"on_date": "2025-03-31"}))

        renewed = _reissue(fed, "Leeds", days=365)
        new_serial = x509.load_pem_x509_certificate(renewed.cert.read_bytes()).serial_number
        assert new_serial != first.serial_number
        assert _served_certificate(fed, node.port).serial_number == new_serial

        # A new client connection works against the renewed certificate, and so does the
        # one opened before; the node never stopped.
        fresh = fedlib.node_stub(fed, node.port)
        assert list(fresh.Describe(node_pb2.DescribeRequest()).warnings) == []
        after = stub.Execute(fedlib.execute_request(fed, signed, {"on_date": "2024-03-31"}))
        assert after.audit_seq > before.audit_seq
    finally:
        node.stop(0)
    # The audit chain runs on across the renewal.
    result = audit.verify(cfg.state_dir / "ledger.sqlite", fed.node_key.public)
    assert result.ok, result.problems


def test_a_broken_renewal_keeps_the_old_certificate(fed: fedlib.Federation) -> None:
    cfg = fedlib.node_config(fed, "Leeds")
    node = start(cfg)
    try:
        serial = _served_certificate(fed, node.port).serial_number
        Path(cfg.tls.cert).write_text("half a certificate\n")
        assert _served_certificate(fed, node.port).serial_number == serial
        stub = fedlib.node_stub(fed, node.port)
        assert stub.Describe(node_pb2.DescribeRequest()).organisation == "Leeds"
    finally:
        node.stop(0)
