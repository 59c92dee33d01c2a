"""Commutative blinding with X25519 (through `cryptography`) on Montgomery u-coordinates.

An element is the 32-byte u-coordinate of a point on Curve25519 or on its quadratic
twist. `blind(k, u)` is X25519: the u-coordinate of [k']P, where k' is k clamped
(bits 0-2 cleared, bit 254 set) and P is either point with u-coordinate u. It
commutes: X25519(a, X25519(b, u)) = u([a'][b']P) = u([b'][a']P) = X25519(b, X25519(a, u)),
because clamping is applied to each key on its own and the scalars multiply as
integers (tests/unit/overlap/test_protocol.py checks it). Since k' is a multiple of
8, every blinded element lies in the prime-order subgroup of the curve (order
about 2^252) or of the twist (about 2^253); Curve25519 was designed to be secure
on its twist, so the decisional Diffie-Hellman problem the protocol relies on is
hard in both. The u-coordinate drops the point's sign, which loses nothing here.

Hashing to the group: SHA-512 of a domain tag, the query id and the identifier,
first 32 bytes, top bit cleared, read as u. The hash's discrete log is unknown.
X25519 refuses a result of zero (a low-order input); that is reported as BadPoint.

Measured on this machine, X25519 ran about 1.25-1.45 times as fast as ristretto255
scalar multiplication through libsodium, and hashing is a plain SHA-512 instead of
a hash-to-group, which matters because every party blinds every element.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

POINT_BYTES = 32
SCALAR_BYTES = 32
_ID_DOMAIN = b"tessera/overlap/v1/id\x00"
_DUMMY_DOMAIN = b"tessera/overlap/v1/dummy\x00"
_PAD_DOMAIN = b"tessera/overlap/v1/pad\x00"

_sha512 = hashlib.sha512
_public = X25519PublicKey.from_public_bytes


class BadPoint(ValueError):
    """A blinded set held bytes that are not usable elements."""


def random_scalar() -> bytes:
    """A fresh random key for one query (X25519 clamps it)."""
    return os.urandom(SCALAR_BYTES)


def random_seed() -> bytes:
    """32 random bytes: one dummy element's seed."""
    return os.urandom(32)


def _to_u(digest: bytes) -> bytes:
    return digest[:31] + bytes([digest[31] & 0x7F])


def random_point() -> bytes:
    """Padding that matches nothing and looks like a blinded element: a random
    u-coordinate raised to a random key (so it lies in a prime-order subgroup too)."""
    u = _to_u(_sha512(_PAD_DOMAIN + os.urandom(32)).digest())
    return X25519PrivateKey.from_private_bytes(os.urandom(32)).exchange(_public(u))


def hash_ids(query_id: bytes, ids: Iterable[str]) -> list[bytes]:
    """H(query, id) for each normalised NHS number. Never leaves the node unblinded."""
    prefix = _ID_DOMAIN + len(query_id).to_bytes(2, "big") + query_id
    return [_to_u(_sha512(prefix + i.encode("ascii")).digest()) for i in ids]


def hash_dummies(query_id: bytes, seeds: Iterable[bytes]) -> list[bytes]:
    """The elements for dummy seeds: a different domain, so never equal to an id's."""
    prefix = _DUMMY_DOMAIN + len(query_id).to_bytes(2, "big") + query_id
    return [_to_u(_sha512(prefix + s).digest()) for s in seeds]


def blind(key: bytes, points: Sequence[bytes]) -> list[bytes]:
    """Each element raised to `key`. Raises BadPoint on an unusable element."""
    exchange = X25519PrivateKey.from_private_bytes(key).exchange
    try:
        return [exchange(_public(p)) for p in points]
    except ValueError as e:  # a low-order input gives the all-zero result
        raise BadPoint("a blinded set holds an element of small order") from e


def pack(points: Sequence[bytes]) -> bytes:
    return b"".join(points)


def unpack(data: bytes) -> list[bytes]:
    if len(data) % POINT_BYTES:
        raise BadPoint(f"points field is {len(data)} bytes, not a multiple of {POINT_BYTES}")
    return [data[i : i + POINT_BYTES] for i in range(0, len(data), POINT_BYTES)]
