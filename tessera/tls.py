"""Mutual TLS for Tessera: a small federation CA, certificates, gRPC credentials and
the identity of the authenticated peer.

Every Tessera server requires a client certificate from the federation CA. The
identity of a caller is its certificate's subject common name (CN); config maps
that name to an organisation and a role. Keys are ECDSA P-256, certificates are
X.509 signed with SHA-256, and files are PEM: `<name>.crt` beside `<name>.key`
(mode 0600).

The CA made here is meant for tests and local federations. A production
federation may bring certificates from its own PKI: only the PEM files matter.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
CERT_DAYS = 365
# Backdate notBefore a little, so a peer whose clock is slightly behind accepts a fresh cert.
_SKEW = timedelta(minutes=5)
# A name becomes a file stem and a CN: keep it to characters that are safe in both.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CA_STEM = "ca"
# Each node's certificate names that node, and only that node, as a DNS SAN
# `<slug>.node.tessera`; whoever connects to a node sets this as the TLS target name
# (`pinned_options`), so the handshake itself refuses any other node's certificate.
NODE_NAME_SUFFIX = ".node.tessera"


class TlsError(ValueError):
    """Certificate material that cannot be made or used."""


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA able to sign: its certificate and private key (kept out of repr)."""

    cert_path: Path
    key_path: Path
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        cert = _load_cert(cert_path.read_bytes(), str(cert_path))
        key = _load_key(key_path.read_bytes(), str(key_path))
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TlsError(f"{key_path}: CA key is not an EC key")
        if cert.public_key() != key.public_key():
            raise TlsError(f"{key_path}: key does not match {cert_path}")
        return cls(cert_path, key_path, cert, key)


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes read once; build gRPC credentials from them without touching disk again."""

    cert: bytes
    key: bytes = field(repr=False)
    ca: bytes

    def server_credentials(self) -> Any:
        # require_client_auth: the handshake fails unless the client presents a
        # certificate that chains to `ca`; there is no anonymous access.
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> Any:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


@dataclass(frozen=True)
class TlsFiles:
    """Where one party's certificate, key and the federation CA certificate live."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def for_name(cls, directory: Path, name: str) -> TlsFiles:
        """The layout written by `make_federation` / `tessera certs`."""
        return cls(directory / f"{name}.crt", directory / f"{name}.key", directory / "ca.crt")

    def load(self) -> TlsMaterial:
        """Read the three files once and check they parse and the key matches the cert,
        so a misconfiguration fails here with a clear message rather than in a handshake.
        A private key that group or others can read is refused."""
        check_private_mode(self.key)
        cert = self.cert.read_bytes()
        key = self.key.read_bytes()
        ca = self.ca.read_bytes()
        leaf = _load_cert(cert, str(self.cert))
        _load_cert(ca, str(self.ca))
        private = _load_key(key, str(self.key))
        if leaf.public_key() != private.public_key():
            raise TlsError(f"{self.key}: key does not match {self.cert}")
        return TlsMaterial(cert=cert, key=key, ca=ca)


@dataclass(frozen=True)
class FederationCerts:
    ca: CertificateAuthority
    nodes: Mapping[str, TlsFiles]
    coordinator: TlsFiles | None
    users: Mapping[str, TlsFiles]

    def all(self) -> dict[str, TlsFiles]:
        out = dict(self.nodes)
        if self.coordinator is not None:
            out[_cn(self.coordinator)] = self.coordinator
        out.update(self.users)
        return out


def check_private_mode(path: Path) -> None:
    """Refuse a private key file readable by group or others, saying how to fix it."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise TlsError(f"cannot read key file {path}: {e.strerror}") from None
    if mode & 0o077:
        raise TlsError(
            f"private key {path} is readable by group or others (mode {mode & 0o777:04o}); "
            f"fix it with: chmod 600 {path}"
        )


def node_server_name(identity: str) -> str:
    """The DNS name a node's certificate carries for the node `identity` (its CN)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", identity.lower()).strip("-")[:63].strip("-")
    if not slug:
        raise TlsError(f"cannot make a host name for the node {identity!r}")
    return slug + NODE_NAME_SUFFIX


def pinned_options(identity: str) -> list[tuple[str, str]]:
    """Channel options that make the handshake accept only `identity`'s node certificate."""
    return [("grpc.ssl_target_name_override", node_server_name(identity))]


def _cn(files: TlsFiles) -> str:
    return files.cert.name.removesuffix(".crt")


def server_credentials(cert_path: Path, key_path: Path, ca_path: Path) -> Any:
    """gRPC server credentials that require a client certificate from `ca_path`."""
    return TlsFiles(cert_path, key_path, ca_path).load().server_credentials()


def channel_credentials(cert_path: Path, key_path: Path, ca_path: Path) -> Any:
    """gRPC channel credentials presenting our certificate and trusting only `ca_path`."""
    return TlsFiles(cert_path, key_path, ca_path).load().channel_credentials()


# What grpc python 1.85 exposes in `context.auth_context()` for an mTLS peer: a dict of
# str -> list[bytes] (measured in tests/integration/test_mtls.py):
#   transport_security_type            [b"ssl"]
#   security_level                     [b"TSI_PRIVACY_AND_INTEGRITY"]
#   x509_common_name                   [b"alice"]            <- the identity we use
#   x509_subject                       [b"O=Org A,CN=alice"] (RFC 2253, reversed order)
#   x509_pem_cert                      [b"-----BEGIN CERTIFICATE-----..."]
#   x509_subject_alternative_name      SANs, only if the cert has any
#   peer_dns / peer_ip                 DNS / IP SANs, only if present
#   ssl_session_reused                 [b"false"]
#   ssl_tls_version                    [b"TLSv1.3"]
#   ssl_negotiated_key_exchange_group  e.g. [b"X25519MLKEM768"]
#   ssl_requested_server_name          SNI, only when the client sent one
# `context.peer_identity_key()` is "x509_subject_alternative_name" when the cert has SANs
# and "x509_common_name" otherwise, so `peer_identities()` gives a node's "localhost"
# rather than its name: we read the CN key directly. The server context has no
# `is_authenticated()`; with require_client_auth a call only exists after a verified
# client certificate, and a missing CN (plaintext port, misissued cert) yields None.
_CN_KEY = "x509_common_name"


def peer_identity(context: Any) -> str | None:
    """The authenticated peer's certificate subject CN, or None if there is none.

    None for a plaintext connection, a peer without a certificate, or an unusable
    CN (several, or not UTF-8): callers answer UNAUTHENTICATED.
    """
    auth = context.auth_context()
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    values = auth.get(_CN_KEY) or []
    if len(values) != 1:
        return None
    try:
        name = bytes(values[0]).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name or None


def make_ca(
    common_name: str,
    out_dir: Path,
    *,
    days: int = CA_DAYS,
    organization: str | None = None,
    stem: str = CA_STEM,
) -> CertificateAuthority:
    """Create a self-signed CA (P-256) and write `<stem>.crt` and `<stem>.key` in out_dir."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = _subject(common_name, organization)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + timedelta(days=days))
        # path_length=0: this CA signs leaf certificates only.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = _write_pair(out_dir, stem, cert, key)
    return CertificateAuthority(cert_path, key_path, cert, key)


def make_certificate(
    ca: CertificateAuthority,
    common_name: str,
    out_dir: Path,
    *,
    server_names: Sequence[str] = (),
    client: bool = True,
    server: bool = False,
    organization: str | None = None,
    days: int = CERT_DAYS,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    stem: str | None = None,
) -> TlsFiles:
    """Issue a leaf certificate signed by `ca` and write `<stem>.crt` / `<stem>.key`
    (stem defaults to the CN). Returns the paths, with `ca.cert_path` as the CA.

    `server_names` become SANs: IP addresses as IP SANs, everything else as DNS SANs.
    `not_before` / `not_after` override the validity window (tests use them to make an
    expired certificate); without them the window is capped at the CA's expiry.
    """
    if not (client or server):
        raise TlsError("a certificate must be for client use, server use or both")
    if server and not server_names:
        raise TlsError("a server certificate needs at least one server name (SAN)")
    stem = common_name if stem is None else stem
    _check_name(stem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    start = now - _SKEW if not_before is None else not_before
    end = (
        min(now + timedelta(days=days), ca.certificate.not_valid_after_utc)
        if not_after is None
        else not_after
    )
    if end <= start:
        raise TlsError("certificate validity window is empty")
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(common_name, organization))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # ECDHE key exchange: the key only ever signs the handshake.
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(n) for n in server_names]), critical=False
        )
    cert = builder.sign(ca.private_key, hashes.SHA256())
    cert_path, key_path = _write_pair(out_dir, stem, cert, key)
    return TlsFiles(cert_path, key_path, ca.cert_path)


LOCAL_SERVER_NAMES = ("localhost", "127.0.0.1")


def make_federation(
    out_dir: Path,
    *,
    nodes: Sequence[str],
    coordinator: str | None,
    users: Sequence[str],
    ca: CertificateAuthority | None = None,
    organizations: Mapping[str, str] | None = None,
    server_names: Sequence[str] = LOCAL_SERVER_NAMES,
    days: int = CERT_DAYS,
    node_server_names: Sequence[str] | None = None,
) -> FederationCerts:
    """A CA (new unless given) and certificates for a local federation, all in out_dir:
    nodes and the coordinator get one certificate for both server and client use
    (SANs `server_names`), users get client-only certificates. The CN of each is
    its name, so names must be unique across roles. `organizations` maps a name to
    the O attribute of its certificate.

    Each node's certificate names that node: SAN `node_server_name(name)`, then
    `node_server_names` (default: `server_names`, which local tests use to reach a
    node at localhost). `tessera certs` passes none, so no two nodes share a name.
    """
    names = [*nodes, *([coordinator] if coordinator is not None else []), *users]
    for name in names:
        _check_name(name)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TlsError(f"names must be unique across nodes, coordinator and users: {dupes}")
    orgs = dict(organizations or {})
    unknown = sorted(set(orgs) - set(names))
    if unknown:
        raise TlsError(f"organisation given for unknown names: {unknown}")
    slugs = [node_server_name(n) for n in nodes]
    if len(set(slugs)) != len(slugs):
        raise TlsError("node names must differ in more than case and punctuation")
    if ca is None:
        ca = make_ca("Tessera federation CA", out_dir)
    extra = tuple(server_names if node_server_names is None else node_server_names)

    def issue(name: str, *, server: bool, node: bool = False) -> TlsFiles:
        names = (node_server_name(name), *extra) if node else tuple(server_names)
        return make_certificate(
            ca,
            name,
            out_dir,
            server_names=names if server else (),
            client=True,
            server=server,
            organization=orgs.get(name),
            days=days,
        )

    node_files = {n: issue(n, server=True, node=True) for n in nodes}
    coord_files = issue(coordinator, server=True) if coordinator is not None else None
    user_files = {u: issue(u, server=False) for u in users}
    return FederationCerts(ca, node_files, coord_files, user_files)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name) or name == CA_STEM:
        raise TlsError(
            f"bad name {name!r}: use 1-64 letters, digits, '.', '_' or '-', not starting "
            f"with punctuation, and not {CA_STEM!r}"
        )


def _subject(common_name: str, organization: str | None) -> x509.Name:
    if not common_name:
        raise TlsError("common name must not be empty")
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _load_cert(data: bytes, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise TlsError(f"{where}: not a PEM certificate") from None


def _load_key(data: bytes, where: str) -> Any:
    # Never echo the bytes: they are a private key.
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise TlsError(f"{where}: not an unencrypted PEM private key") from None


def _write_pair(
    out_dir: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path = out_dir / f"{stem}.crt"
    key_path = out_dir / f"{stem}.key"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Key first: a crash never leaves a certificate without its key.
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # mkstemp creates the file 0600, so the key is never readable by others, even briefly.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
