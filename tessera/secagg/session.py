"""What both sides of a secure-aggregation session share: its limits and stages,
the protocol's errors, roster validation, and the digests messages are signed over.

Changing a digest here changes what nodes and the coordinator sign: the wire bytes.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from tessera import keys
from tessera.secagg import crypto
from tessera.wire.v1 import secagg_pb2 as pb

IntVector = npt.NDArray[np.int64]

# |cell| < 2^56: 128 nodes' inputs sum to less than 2^63 in magnitude.
MAX_ABS_INPUT = 1 << 56
MAX_PARTICIPANTS = 128
MIN_PARTICIPANTS = 3
MAX_VECTOR_LENGTH = 1 << 22
KEY_BYTES = 32


class Stage(Enum):
    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


class SecAggError(Exception):
    """Base of the protocol's errors; `str()` is safe to show (nothing record-level)."""


class Refused(SecAggError):
    """A message failed a check (binding, signature, stage, set, AEAD tag)."""


class Aborted(SecAggError):
    """The session cannot release a sum; nothing is released."""


def raw_public(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def validate_session(session: pb.SecAggSession) -> dict[int, keys.PublicKey]:
    """The roster as index -> identity key, or Refused for a session no node may join."""
    if not session.session_id:
        raise Refused("the session has no id")
    n = len(session.participants)
    if not MIN_PARTICIPANTS <= n <= MAX_PARTICIPANTS:
        raise Refused(f"a session needs {MIN_PARTICIPANTS} to {MAX_PARTICIPANTS} participants")
    # t > n/2: two disjoint groups can never both collect t consistency signatures.
    if not n // 2 < session.threshold <= n or session.threshold < 2:
        raise Refused("the threshold must be above half the participants and at most all")
    if not 1 <= session.vector_length <= MAX_VECTOR_LENGTH:
        raise Refused("the vector length is out of range")
    if session.stage_deadline_ms == 0:
        raise Refused("the session has no stage deadline")
    roster: dict[int, keys.PublicKey] = {}
    for p in session.participants:
        if not 1 <= p.index <= n or p.index in roster:
            raise Refused("participant indexes must be 1..n, each once")
        try:
            roster[p.index] = keys.PublicKey.from_id(p.node_key_id)
        except keys.KeyError_ as e:
            raise Refused(f"participant {p.index}: {e}") from None
    if len({k.raw for k in roster.values()}) != n:
        raise Refused("a node key appears twice in the roster")
    return roster


def shares_digest(shares: list[pb.SecAggEncryptedShare]) -> bytes:
    return crypto.digest(
        b"".join(
            crypto.u32(s.sender)
            + crypto.u32(s.recipient)
            + crypto.lp(s.nonce)
            + crypto.lp(s.ciphertext)
            for s in shares
        )
    )


def revealed_digest(shares: list[pb.SecAggRevealedShare]) -> bytes:
    return crypto.digest(
        b"".join(crypto.u32(s.owner) + crypto.u32(s.kind) + crypto.lp(s.share) for s in shares)
    )


def to_ring(vector: IntVector) -> crypto.U64Vector:
    return np.asarray(vector, dtype=np.int64).view(np.uint64)


def from_ring(vector: crypto.U64Vector) -> IntVector:
    return np.asarray(vector, dtype=np.uint64).view(np.int64)


def check_advertise(
    a: pb.SecAggAdvertise, context: bytes, roster: dict[int, keys.PublicKey]
) -> str | None:
    if a.context != context:
        return "an advertisement belongs to another session"
    if a.sender not in roster:
        return f"node {a.sender} is not in the session"
    if len(a.encryption_public) != KEY_BYTES or len(a.mask_public) != KEY_BYTES:
        return f"node {a.sender} advertised a key of the wrong length"
    if not crypto.verify(
        roster[a.sender],
        a.signature,
        "advertise",
        context,
        crypto.u32(a.sender),
        a.encryption_public,
        a.mask_public,
    ):
        return f"node {a.sender}'s advertisement is not signed by its identity key"
    return None
