from __future__ import annotations

import argparse
import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tessera import tls
from tessera.cli import certs_cmd


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> tls.CertificateAuthority:
    return tls.make_ca("Test CA", tmp_path, organization="Tessera tests")


def test_ca_certificate(ca: tls.CertificateAuthority, tmp_path: Path) -> None:
    assert ca.cert_path == tmp_path / "ca.crt" and ca.key_path == tmp_path / "ca.key"
    cert = load(ca.cert_path)
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test CA"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "Tessera tests"
    )
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    cert.verify_directly_issued_by(cert)
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    assert mode(ca.key_path) == 0o600
    assert "private_key" not in repr(ca)  # the CA key never appears in logs


def test_server_and_client_certificate(ca: tls.CertificateAuthority, tmp_path: Path) -> None:
    out = tmp_path / "leaf"
    files = tls.make_certificate(
        ca,
        "council-a",
        out,
        server_names=["localhost", "127.0.0.1", "::1"],
        client=True,
        server=True,
        organization="Council A",
    )
    assert files == tls.TlsFiles(out / "council-a.crt", out / "council-a.key", ca.cert_path)
    assert mode(files.key) == 0o600
    assert mode(out) == 0o700
    cert = load(files.cert)
    cert.verify_directly_issued_by(load(ca.cert_path))
    assert cert.subject.rfc4514_string() == "O=Council A,CN=council-a"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc <= load(ca.cert_path).not_valid_after_utc


def test_client_only_certificate(ca: tls.CertificateAuthority, tmp_path: Path) -> None:
    files = tls.make_certificate(ca, "alice", tmp_path)
    cert = load(files.cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)


def test_validity_overrides_make_an_expired_certificate(
    ca: tls.CertificateAuthority, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    files = tls.make_certificate(
        ca, "old", tmp_path, not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    assert load(files.cert).not_valid_after_utc < now
    with pytest.raises(tls.TlsError, match="empty"):
        tls.make_certificate(ca, "never", tmp_path, not_before=now, not_after=now)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"client": False, "server": False}, "client use, server use or both"),
        ({"server": True}, "needs at least one server name"),
        ({"stem": "../escape"}, "bad name"),
        ({"stem": "ca"}, "bad name"),
    ],
)
def test_certificate_refusals(
    ca: tls.CertificateAuthority, tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(tls.TlsError, match=match):
        tls.make_certificate(ca, "x", tmp_path, **kwargs)  # type: ignore[arg-type]


def test_ca_load_round_trip(ca: tls.CertificateAuthority, tmp_path: Path) -> None:
    again = tls.CertificateAuthority.load(ca.cert_path, ca.key_path)
    assert again.certificate == ca.certificate
    other = tls.make_ca("Other", tmp_path / "other")
    with pytest.raises(tls.TlsError, match="does not match"):
        tls.CertificateAuthority.load(ca.cert_path, other.key_path)


def test_tls_files_load_checks_and_hides_the_key(
    ca: tls.CertificateAuthority, tmp_path: Path
) -> None:
    files = tls.make_certificate(ca, "alice", tmp_path)
    assert tls.TlsFiles.for_name(tmp_path, "alice") == files
    material = files.load()
    assert material.key == files.key.read_bytes()
    assert b"PRIVATE KEY" in material.key and "PRIVATE" not in repr(material)
    assert isinstance(material.channel_credentials(), grpc.ChannelCredentials)
    assert isinstance(material.server_credentials(), grpc.ServerCredentials)
    assert isinstance(
        tls.channel_credentials(files.cert, files.key, files.ca), grpc.ChannelCredentials
    )
    assert isinstance(
        tls.server_credentials(files.cert, files.key, files.ca), grpc.ServerCredentials
    )

    bob = tls.make_certificate(ca, "bob", tmp_path)
    with pytest.raises(tls.TlsError, match="does not match"):
        tls.TlsFiles(files.cert, bob.key, files.ca).load()
    with pytest.raises(tls.TlsError, match="not a PEM certificate"):
        tls.TlsFiles(files.key, files.key, files.ca).load()
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_bytes(files.cert.read_bytes())
    not_a_key.chmod(0o600)
    with pytest.raises(tls.TlsError, match="not an unencrypted PEM private key") as e:
        tls.TlsFiles(files.cert, not_a_key, files.ca).load()
    assert "BEGIN" not in str(e.value)


def test_a_tls_key_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    ca = tls.make_ca("Test CA", tmp_path)
    files = tls.make_certificate(ca, "alice", tmp_path)
    assert files.key.stat().st_mode & 0o777 == 0o600
    files.key.chmod(0o640)
    with pytest.raises(tls.TlsError) as e:
        files.load()
    assert f"chmod 600 {files.key}" in str(e.value) and "0640" in str(e.value)


def test_node_certificates_name_only_their_node(tmp_path: Path) -> None:
    fed = tls.make_federation(
        tmp_path,
        nodes=["Leeds", "NHS-Trust.B"],
        coordinator="c",
        users=[],
        node_server_names=(),
    )
    for name, files in fed.nodes.items():
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(v) for v in sans.get_values_for_type(x509.DNSName)] == [
            tls.node_server_name(name)
        ]
    assert tls.node_server_name("NHS-Trust.B") == "nhs-trust-b.node.tessera"
    assert tls.pinned_options("Leeds") == [("grpc.ssl_target_name_override", "leeds.node.tessera")]
    with pytest.raises(tls.TlsError, match="more than case"):
        tls.make_federation(tmp_path / "x", nodes=["Leeds", "leeds"], coordinator=None, users=[])


def test_make_federation(tmp_path: Path) -> None:
    fed = tls.make_federation(
        tmp_path,
        nodes=["council-a", "trust-b"],
        coordinator="coordinator",
        users=["alice", "approver-1"],
        organizations={"council-a": "Council A"},
    )
    assert set(fed.all()) == {"council-a", "trust-b", "coordinator", "alice", "approver-1"}
    ca_cert = load(tmp_path / "ca.crt")
    for name, files in fed.all().items():
        cert = load(files.cert)
        cert.verify_directly_issued_by(ca_cert)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert files.ca == tmp_path / "ca.crt"
        assert mode(files.key) == 0o600
        eku = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        server = name in ("council-a", "trust-b", "coordinator")
        assert (ExtendedKeyUsageOID.SERVER_AUTH in eku) == server
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert load(fed.nodes["council-a"].cert).subject.get_attributes_for_oid(
        NameOID.ORGANIZATION_NAME
    )[0].value == ("Council A")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nodes": ["a"], "coordinator": "a", "users": []}, "unique"),
        ({"nodes": ["a b"], "coordinator": None, "users": []}, "bad name"),
        (
            {"nodes": ["a"], "coordinator": None, "users": [], "organizations": {"z": "Z"}},
            "unknown",
        ),
    ],
)
def test_make_federation_refusals(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(tls.TlsError, match=match):
        tls.make_federation(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "ca.key").exists()  # nothing written before the checks pass


class FakeContext:
    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"transport_security_type": [b"ssl"], "x509_common_name": [b"alice"]}, "alice"),
        ({"transport_security_type": [b"ssl"], "x509_common_name": [b"\xc3\xa9"]}, "é"),
        ({"transport_security_type": [b"ssl"]}, None),
        ({"transport_security_type": [b"insecure"], "x509_common_name": [b"alice"]}, None),
        ({"x509_common_name": [b"alice"]}, None),
        ({}, None),
        ({"transport_security_type": [b"ssl"], "x509_common_name": [b"a", b"b"]}, None),
        ({"transport_security_type": [b"ssl"], "x509_common_name": [b"\xff"]}, None),
        ({"transport_security_type": [b"ssl"], "x509_common_name": [b""]}, None),
    ],
)
def test_peer_identity(auth: dict[str, list[bytes]], expected: str | None) -> None:
    assert tls.peer_identity(FakeContext(auth)) == expected


# -- `tessera certs` --------------------------------------------------------------------


def certs(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tessera")
    certs_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["certs", *argv])
    code: int = args.handler(args, {})
    return code


def test_cli_certs_writes_a_federation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    argv = [str(out), "--node", "council-a", "--node", "trust-b", "--coordinator", "coord"]
    assert certs([*argv, "--user", "alice", "--org", "alice=Analysts Ltd"]) == 0
    captured = capsys.readouterr()
    assert "for testing and local federations" in captured.err
    assert "PRIVATE" not in captured.out + captured.err
    for name in ("ca", "council-a", "trust-b", "coord", "alice"):
        assert (out / f"{name}.crt").is_file()
        assert mode(out / f"{name}.key") == 0o600
        assert str(out / f"{name}.crt") in captured.out
    assert load(out / "alice.crt").subject.rfc4514_string() == "O=Analysts Ltd,CN=alice"
    # Each node's certificate names that node only; the coordinator keeps the local names.
    for node in ("council-a", "trust-b"):
        sans = load(out / f"{node}.crt").extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
        assert [str(n) for n in sans.value.get_values_for_type(x509.DNSName)] == [
            f"{node}.node.tessera"
        ]
        assert sans.value.get_values_for_type(x509.IPAddress) == []
    coord = load(out / "coord.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert coord.value.get_values_for_type(x509.DNSName) == ["localhost"]

    # Existing certificates are not overwritten without --force.
    assert certs([str(out), "--user", "alice"]) == 1
    assert "would overwrite" in capsys.readouterr().err
    before = (out / "alice.crt").read_bytes()
    assert certs([str(out), "--user", "alice", "--force"]) == 0
    assert (out / "alice.crt").read_bytes() != before

    # A later user is signed by the same CA.
    ca_before = (out / "ca.crt").read_bytes()
    assert certs([str(out), "--user", "bob"]) == 0
    assert "using existing CA" in capsys.readouterr().out
    assert (out / "ca.crt").read_bytes() == ca_before
    load(out / "bob.crt").verify_directly_issued_by(load(out / "ca.crt"))


def test_cli_certs_ca_only_and_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pki"
    assert certs([str(out), "--ca-only"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key"]
    assert certs([str(out), "--ca-only"]) == 1  # would replace the CA
    assert certs([str(out), "--ca-only", "--user", "x"]) == 2
    assert certs([str(out)]) == 2
    assert certs([str(out), "--user", "x", "--org", "novalue"]) == 2
    assert certs([str(out), "--user", "bad/name"]) == 1
    assert "bad name" in capsys.readouterr().err
