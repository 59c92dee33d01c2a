"""The primitives of a secure-aggregation session, all from `cryptography`.

- The context: SHA-256 of the session's canonical encoding. Every signature, AEAD
  and key derivation binds it, so nothing from one session works in another.
- Signatures: Ed25519 by the node's identity key, domain `keys.SECAGG`, over the
  stage name, the context and the message's fields, each length-prefixed.
- Share encryption: AES-256-GCM under HKDF-SHA256 of an X25519 shared secret, with
  the context, stage and both node indexes as associated data.
- Masks: AES-256-CTR keystream (zero IV; the key is fresh for each session and pair)
  keyed by HKDF-SHA256 of the full 32-byte seed or shared secret, salted with the
  context; read as little-endian u64 cells. No bits of the seed are ever dropped.
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tessera import keys
from tessera.wire.v1 import secagg_pb2 as pb

U64Vector = npt.NDArray[np.uint64]

_LABEL = b"tessera/secagg/v1/"


def lp(data: bytes) -> bytes:
    """Length-prefixed bytes: the unambiguous join used in every signed payload."""
    return struct.pack(">I", len(data)) + data


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def indexes(values: list[int] | tuple[int, ...]) -> bytes:
    return b"".join(u32(v) for v in values)


def context_digest(session: pb.SecAggSession) -> bytes:
    """SHA-256 of the session: id, threshold, vector length, deadline and roster."""
    parts = [
        lp(session.session_id.encode()),
        u32(session.threshold),
        u32(session.vector_length),
        u32(session.stage_deadline_ms),
    ]
    for p in sorted(session.participants, key=lambda p: p.index):
        parts.append(u32(p.index) + lp(p.node_key_id.encode()))
    return hashlib.sha256(_LABEL + b"session\x00" + b"".join(parts)).digest()


def signed_payload(stage: str, context: bytes, *fields: bytes) -> bytes:
    return lp(stage.encode()) + lp(context) + b"".join(lp(f) for f in fields)


def sign(identity: keys.SigningKey, stage: str, context: bytes, *fields: bytes) -> bytes:
    return identity.sign(keys.SECAGG, signed_payload(stage, context, *fields))


def verify(
    public: keys.PublicKey, signature: bytes, stage: str, context: bytes, *fields: bytes
) -> bool:
    return public.verify(keys.SECAGG, signed_payload(stage, context, *fields), signature)


def derive_key(secret: bytes, context: bytes, label: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=context, info=_LABEL + label).derive(secret)


def share_aad(context: bytes, sender: int, recipient: int) -> bytes:
    return lp(context) + b"share_keys" + u32(sender) + u32(recipient)


def encrypt_share(
    shared_secret: bytes, context: bytes, sender: int, recipient: int, plaintext: bytes
) -> tuple[bytes, bytes]:
    low, high = sorted((sender, recipient))
    key = derive_key(shared_secret, context, b"share-encryption" + u32(low) + u32(high))
    nonce = os.urandom(12)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, share_aad(context, sender, recipient))


def decrypt_share(
    shared_secret: bytes,
    context: bytes,
    sender: int,
    recipient: int,
    nonce: bytes,
    ciphertext: bytes,
) -> bytes | None:
    """The plaintext, or None when the ciphertext, nonce or binding was tampered with."""
    low, high = sorted((sender, recipient))
    key = derive_key(shared_secret, context, b"share-encryption" + u32(low) + u32(high))
    if len(nonce) != 12:
        return None
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, share_aad(context, sender, recipient))
    except InvalidTag:
        return None


def expand(seed: bytes, context: bytes, label: bytes, length: int) -> U64Vector:
    """`length` pseudorandom u64 cells from the full seed (AES-256-CTR)."""
    key = derive_key(seed, context, label)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(8 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def self_mask(seed: bytes, context: bytes, length: int) -> U64Vector:
    return expand(seed, context, b"self-mask", length)


def pairwise_mask(shared_secret: bytes, context: bytes, a: int, b: int, length: int) -> U64Vector:
    low, high = sorted((a, b))
    return expand(shared_secret, context, b"pairwise-mask" + u32(low) + u32(high), length)


def seed_commitment(context: bytes, sender: int, seed: bytes) -> bytes:
    return hashlib.sha256(
        _LABEL + b"seed-commitment\x00" + lp(context) + u32(sender) + seed
    ).digest()


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
