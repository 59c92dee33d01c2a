"""Ed25519 keys: generation, files, key ids and domain-separated signatures.

A key id is "ed25519:" followed by the 64-hex-digit raw public key, so it can
be written in a template or config and checked without any registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

PREFIX = "ed25519:"

# Domain separation: a signature made for one purpose never verifies for another.
TEMPLATE_APPROVAL = b"tessera/v1/template-approval\x00"
QUERY_REQUEST = b"tessera/v1/query-request\x00"
AUDIT_ENTRY = b"tessera/v1/audit-entry\x00"
AUDIT_HEAD = b"tessera/v1/audit-head\x00"


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
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, domain + message)
        except (InvalidSignature, ValueError):
            return False
        return True


class SigningKey:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, domain: bytes, message: bytes) -> bytes:
        return self._private.sign(domain + message)

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
        return cls.from_pem(path.read_bytes())

    def save(self, path: Path) -> None:
        """Write the private key readable by its owner only, and the key id beside it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.private_pem())
        path.with_suffix(path.suffix + ".pub").write_text(self.public.key_id + "\n")
