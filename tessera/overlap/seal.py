"""Sealed messages between two parties of one overlap query, relayed by anyone.

X25519 (a fresh ephemeral key per message, to the recipient's per-query key),
HKDF-SHA256 and AES-256-GCM. The header (query id, step, sender, recipient) is
the associated data, so a relay cannot read a sealed body, move it to another
query or step, or redirect it to another recipient without the open failing.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tessera.wire.v1 import overlap_pb2 as pb

_INFO = b"tessera/overlap/v1/seal"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class SealError(ValueError):
    """A sealed message that does not open for this recipient, query and step."""


def new_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(*_RAW)


def _header(query_id: bytes, step: int, sender: int, recipient: int) -> bytes:
    return (
        len(query_id).to_bytes(2, "big")
        + query_id
        + step.to_bytes(2, "big")
        + sender.to_bytes(4, "big")
        + recipient.to_bytes(4, "big")
    )


def _aead(shared: bytes, header: bytes) -> AESGCM:
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + header)
    return AESGCM(kdf.derive(shared))


def seal(
    query_id: bytes, step: int, sender: int, recipient: int, to_key: bytes, body: bytes
) -> pb.OverlapSealed:
    eph = X25519PrivateKey.generate()
    header = _header(query_id, step, sender, recipient)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(to_key))
    nonce = os.urandom(12)
    ct = _aead(shared, header).encrypt(nonce, body, header)
    return pb.OverlapSealed(
        query_id=query_id,
        step=step,  # type: ignore[arg-type]
        sender=sender,
        recipient=recipient,
        ephemeral_public_key=public_bytes(eph),
        nonce=nonce,
        ciphertext=ct,
    )


def open_sealed(
    msg: pb.OverlapSealed, key: X25519PrivateKey, query_id: bytes, step: int, recipient: int
) -> bytes:
    """The body, if `msg` was sealed to `key` for this query, step and recipient."""
    if msg.query_id != query_id or msg.step != step or msg.recipient != recipient:
        raise SealError("a sealed message for another query, step or recipient")
    header = _header(msg.query_id, msg.step, msg.sender, msg.recipient)
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(msg.ephemeral_public_key))
        return _aead(shared, header).decrypt(msg.nonce, msg.ciphertext, header)
    except (InvalidTag, ValueError) as e:
        raise SealError("a sealed message did not open") from e
