"""Ed25519 keys: generation, files, key ids and domain-separated signatures.

A key id is "ed25519:" followed by the 64-hex-digit raw public key, so it can
be written in a template or config and checked without any registry.
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)

PREFIX = "ed25519:"

# Domain separation: a signature made for one purpose never verifies for another.
TEMPLATE_APPROVAL = b"tessera/v1/template-approval\x00"
QUERY_REQUEST = b"tessera/v1/query-request\x00"
AUDIT_ENTRY = b"tessera/v1/audit-entry\x00"
AUDIT_HEAD = b"tessera/v1/audit-head\x00"
# A node's statement of what it released for a request (tessera.answers).
ANSWER = b"tessera/v1/answer\x00"
# A node's messages in a secure-aggregation session (tessera.secagg).
SECAGG = b"tessera/v1/secagg\x00"
# A node's per-query sealing key in an overlap session (tessera.overlap.session).
OVERLAP_HELLO = b"tessera/v1/overlap-hello\x00"
# The coordinator's receipt log entries reuse AUDIT_ENTRY / AUDIT_HEAD (tessera.audit).


class KeyError_(ValueError):
    """A key id or key file that cannot be used."""


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    @property
    def key_id(self) -> str:
        return PREFIX + self.raw.hex()

    @classmethod
    def from_id(cls, key_id: str) -> PublicKey:
        if not isinstance(key_id, str) or not key_id.startswith(PREFIX):
            raise KeyError_("key id must start with 'ed25519:'")
        hexpart = key_id[len(PREFIX) :]
        if len(hexpart) != 64:
            raise KeyError_("key id must carry 64 hex digits")
        try:
            raw = bytes.fromhex(hexpart)
        except ValueError:
            raise KeyError_("key id is not hex") from None
        if hexpart != raw.hex():
            raise KeyError_("key id must be lower-case hex")
        return cls(raw)

    def verify(self, domain: bytes, message: bytes, signature: bytes) -> bool:
        try:
            _public_key(self.raw).verify(domain + message, signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True


@functools.lru_cache(maxsize=1024)
def _public_key(raw: bytes) -> nacl.signing.VerifyKey:
    """Decoding a public key is a pure function of its bytes; the same few keys (approvers,
    analysts, nodes) verify again and again. Raises for bytes that are not one (not
    cached). Signatures are checked by libsodium: twice as fast here as OpenSSL's
    Ed25519 (60 against 118 us), and strict (it refuses small-order keys and a
    non-canonical S)."""
    return nacl.signing.VerifyKey(raw)


class SigningKey:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)
        # The same key in libsodium, which signs it (23 against 36 us); Ed25519 is
        # deterministic, so both libraries make the same signature.
        self._signer = nacl.signing.SigningKey(private.private_bytes_raw())

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, domain: bytes, message: bytes) -> bytes:
        return self._signer.sign(domain + message).signature

    def private_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise KeyError_("not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyError_("not an Ed25519 private key")
        return cls(key)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Read a private key file, refusing one that group or others can read."""
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise KeyError_(f"cannot read key file {path}: {e.strerror}") from None
        if mode & 0o077:
            raise KeyError_(
                f"private key {path} is readable by group or others (mode "
                f"{stat.S_IMODE(mode):04o}); fix it with: chmod 600 {path}"
            )
        return cls.from_pem(path.read_bytes())

    def save(self, path: Path) -> None:
        """Write the private key readable by its owner only, and the key id beside it.

        Atomic and always 0600: the key goes to a fresh temporary file created 0600 in
        the same folder, then replaces `path`, so an existing file's looser mode (or a
        crash half-way) can never leave a new key exposed or truncated."""
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, self.private_pem(), 0o600)
        _write_atomic(
            path.with_suffix(path.suffix + ".pub"), (self.public.key_id + "\n").encode(), 0o644
        )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
