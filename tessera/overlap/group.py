"""ristretto255 through libsodium (rbcl): hashing to the group and blinding.

ristretto255 is a prime-order group, so blinding commutes exactly,
(H(x)^a)^b = (H(x)^b)^a, with no cofactor or clamping to reason about, every
32-byte encoding that decodes is a valid element, and libsodium's
`from_hash` maps 64 uniform bytes to an element with no known discrete log.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

import rbcl  # type: ignore[import-untyped]

POINT_BYTES = 32
SCALAR_BYTES = 32
_ID_DOMAIN = b"tessera/overlap/v1/id\x00"
_DUMMY_DOMAIN = b"tessera/overlap/v1/dummy\x00"

_from_hash = rbcl.crypto_core_ristretto255_from_hash
_smul = rbcl.crypto_scalarmult_ristretto255
_sha512 = hashlib.sha512


class BadPoint(ValueError):
    """A blinded set held bytes that are not ristretto255 elements."""


def random_scalar() -> bytes:
    """A fresh, uniformly random non-zero scalar (a party's key for one query)."""
    return bytes(rbcl.crypto_core_ristretto255_scalar_random())


def random_seed() -> bytes:
    """32 random bytes: one dummy element's seed."""
    return os.urandom(32)


def random_point() -> bytes:
    """A uniformly random element (padding: it matches nothing)."""
    return bytes(rbcl.crypto_core_ristretto255_random())


def hash_ids(query_id: bytes, ids: Iterable[str]) -> list[bytes]:
    """H(query, id) for each normalised NHS number. Never leaves the node unblinded."""
    prefix = _ID_DOMAIN + len(query_id).to_bytes(2, "big") + query_id
    return [_from_hash(_sha512(prefix + i.encode("ascii")).digest()) for i in ids]


def hash_dummies(query_id: bytes, seeds: Iterable[bytes]) -> list[bytes]:
    """The elements for dummy seeds: a different domain, so never equal to an id's."""
    prefix = _DUMMY_DOMAIN + len(query_id).to_bytes(2, "big") + query_id
    return [_from_hash(_sha512(prefix + s).digest()) for s in seeds]


def blind(key: bytes, points: Sequence[bytes]) -> list[bytes]:
    """Each point raised to `key`. Raises BadPoint on an invalid encoding."""
    try:
        return [_smul(key, p) for p in points]
    except Exception as e:  # rbcl raises a bare RuntimeError for a bad encoding
        raise BadPoint("a blinded set holds an invalid ristretto255 element") from e


def pack(points: Sequence[bytes]) -> bytes:
    return b"".join(points)


def unpack(data: bytes) -> list[bytes]:
    if len(data) % POINT_BYTES:
        raise BadPoint(f"points field is {len(data)} bytes, not a multiple of {POINT_BYTES}")
    return [data[i : i + POINT_BYTES] for i in range(0, len(data), POINT_BYTES)]
