"""Commutative blinding with X25519 on Montgomery u-coordinates.

An element is the 32-byte u-coordinate of a point on Curve25519 or on its quadratic
twist. `blind(k, u)` is X25519: the u-coordinate of [k']P, where k' is k clamped
(bits 0-2 cleared, bit 254 set) and P is either point with u-coordinate u. It
commutes: X25519(a, X25519(b, u)) = u([a'][b']P) = u([b'][a']P) = X25519(b, X25519(a, u)),
because clamping is applied to each key on its own and the scalars multiply as
integers (tests/unit/overlap/test_group.py checks it). Since k' is a multiple of
8, every blinded element lies in the prime-order subgroup of the curve (order
about 2^252) or of the twist (about 2^253); Curve25519 was designed to be secure
on its twist, so the decisional Diffie-Hellman problem the protocol relies on is
hard in both. The u-coordinate drops the point's sign, which loses nothing here.

Hashing to the group: SHA-512 of a domain tag, the query id and the identifier,
first 32 bytes, top bit cleared, read as u. The hash's discrete log is unknown.
X25519 refuses a result of zero (a low-order input); that is reported as BadPoint.

Two implementations of the same function, chosen by measurement (docs/overlap.md,
"Speed"): OpenSSL's through `cryptography` (the fastest per operation here, but it
holds the GIL) and libsodium's `crypto_scalarmult` through PyNaCl (about 15% slower
per operation, but it releases the GIL, so a party can blind on several cores).
Sets move as packed bytes (32 per element): no object per element on a relay hop.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from nacl._sodium import ffi as _ffi  # PyNaCl's own cffi binding of libsodium
from nacl._sodium import lib as _sodium

POINT_BYTES = 32
SCALAR_BYTES = 32
_ID_DOMAIN = b"tessera/overlap/v1/id\x00"
_DUMMY_DOMAIN = b"tessera/overlap/v1/dummy\x00"
_PAD_DOMAIN = b"tessera/overlap/v1/pad\x00"

_sha512 = hashlib.sha512
try:  # the Rust constructor itself: skips a Python wrapper per element (about 7%)
    from cryptography.hazmat.bindings._rust import openssl as _rust_openssl

    _public: Callable[[bytes], X25519PublicKey] = _rust_openssl.x25519.from_public_bytes
except (ImportError, AttributeError):  # pragma: no cover - a cryptography that moved it
    _public = X25519PublicKey.from_public_bytes

AUTO = "auto"  # OpenSSL on one thread (the fastest per operation), libsodium on more
OPENSSL = "openssl"
SODIUM = "sodium"
BACKENDS = (AUTO, OPENSSL, SODIUM)
# Below this many elements a batch is not split across threads.
_MIN_SPLIT = 2048


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


def _clear_top_bits(data: bytearray) -> bytes:
    """Clears bit 255 of every element of a packed set in place (vectorised _to_u)."""
    arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, POINT_BYTES)
    arr[:, 31] &= 0x7F
    return bytes(data)


def _prefix(domain: bytes, query_id: bytes) -> bytes:
    return domain + len(query_id).to_bytes(2, "big") + query_id


def hash_ids(query_id: bytes, ids: Iterable[str]) -> list[bytes]:
    """H(query, id) for each normalised NHS number. Never leaves the node unblinded."""
    prefix = _prefix(_ID_DOMAIN, query_id)
    return [_to_u(_sha512(prefix + i.encode("ascii")).digest()) for i in ids]


def hash_dummies(query_id: bytes, seeds: Iterable[bytes]) -> list[bytes]:
    """The elements for dummy seeds: a different domain, so never equal to an id's."""
    prefix = _prefix(_DUMMY_DOMAIN, query_id)
    return [_to_u(_sha512(prefix + s).digest()) for s in seeds]


def hash_items(
    query_id: bytes, kinds: Sequence[int], values: Sequence[str | bytes | None]
) -> bytes:
    """One packed set to blind: for kind 0 H(query, id), for kind 1 a dummy seed's
    element, for kind 2 (padding) a random element, which the owner's key then blinds
    like the rest, so padding costs one operation and looks like every other element.
    The same values as hash_ids and hash_dummies."""
    ids, dummies, pad = (
        _prefix(_ID_DOMAIN, query_id),
        _prefix(_DUMMY_DOMAIN, query_id),
        _PAD_DOMAIN,
    )
    noise = os.urandom(32 * kinds.count(2))  # the padding's randomness, in one read
    pads = (noise[i : i + 32] for i in range(0, len(noise), 32))
    sha = _sha512
    out = bytearray(
        b"".join(
            [
                sha(ids + v.encode("ascii")).digest()[:32]  # type: ignore[union-attr]
                if k == 0
                else sha(dummies + v).digest()[:32]  # type: ignore[operator]
                if k == 1
                else sha(pad + next(pads)).digest()[:32]
                for k, v in zip(kinds, values, strict=True)
            ]
        )
    )
    return _clear_top_bits(out)


def check_packed(data: bytes) -> None:
    if len(data) % POINT_BYTES:
        raise BadPoint(f"points field is {len(data)} bytes, not a multiple of {POINT_BYTES}")


def _blind_openssl(key: bytes, data: bytes) -> bytes:
    exchange = X25519PrivateKey.from_private_bytes(key).exchange
    try:
        return b"".join([exchange(_public(data[i : i + 32])) for i in range(0, len(data), 32)])
    except ValueError as e:  # a low-order input gives the all-zero result
        raise BadPoint("a blinded set holds an element of small order") from e


def _sodium_range(key: bytes, src: bytes, out: object, start: int, stop: int) -> bool:
    """Blinds elements [start, stop) of src into out; False if one was of small order.
    Each call releases the GIL, so threads run this on several cores at once."""
    mult = _sodium.crypto_scalarmult
    inp = _ffi.from_buffer(src)
    bad = 0
    for off in range(start * 32, stop * 32, 32):
        bad |= mult(out + off, key, inp + off)  # type: ignore[operator]
    return bad == 0


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="overlap-blind")
        return _pool


def _blind_sodium(key: bytes, data: bytes, threads: int) -> bytes:
    n = len(data) // POINT_BYTES
    out = _ffi.new("unsigned char[]", max(1, len(data)))
    parts = max(1, min(threads, n // _MIN_SPLIT))
    if parts == 1:
        ok = [_sodium_range(key, data, out, 0, n)]
    else:
        bounds = [n * i // parts for i in range(parts + 1)]
        pool = _executor()
        futures = [
            pool.submit(_sodium_range, key, data, out, bounds[i], bounds[i + 1])
            for i in range(parts)
        ]
        ok = [f.result() for f in futures]
    if not all(ok):  # libsodium refuses a small-order input (an all-zero result)
        raise BadPoint("a blinded set holds an element of small order")
    return bytes(_ffi.buffer(out, len(data)))


# Measured on this machine (docs/overlap.md, "Speed"; bench/overlap_bench.py). A node
# blinds on all its cores; the benchmark, whose parties share one machine, sets one each.
BACKEND = AUTO
THREADS = os.cpu_count() or 1


def configure(backend: str = AUTO, threads: int | None = None) -> None:
    """Sets this process's blinding backend and the threads it may use."""
    global BACKEND, THREADS
    if backend not in BACKENDS:
        raise ValueError(f"no blinding backend {backend!r}; one of {', '.join(BACKENDS)}")
    if threads is not None and threads < 1:
        raise ValueError("threads must be at least 1")
    BACKEND = backend
    if threads is not None:
        THREADS = threads


def blind_packed(
    key: bytes, data: bytes, *, backend: str | None = None, threads: int | None = None
) -> bytes:
    """Every element of a packed set raised to `key`, packed in the same order.
    Raises BadPoint on an unusable element or a length that is not whole elements."""
    check_packed(data)
    which = BACKEND if backend is None else backend
    n = THREADS if threads is None else threads
    if which == AUTO:
        which = SODIUM if n > 1 and len(data) >= 2 * _MIN_SPLIT * POINT_BYTES else OPENSSL
    if which == OPENSSL:
        return _blind_openssl(key, data)
    if which == SODIUM:
        return _blind_sodium(key, data, n)
    raise ValueError(f"no blinding backend {which!r}; one of {', '.join(BACKENDS)}")


def blind(key: bytes, points: Sequence[bytes], *, backend: str | None = None) -> list[bytes]:
    """Each element raised to `key`. Raises BadPoint on an unusable element."""
    if any(len(p) != POINT_BYTES for p in points):
        raise BadPoint(f"an element is not {POINT_BYTES} bytes")
    return unpack(blind_packed(key, pack(points), backend=backend))


def shuffle_packed(data: bytes) -> bytes:
    """A uniformly random permutation of a packed set's elements, from the operating
    system's CSPRNG: sorting by 64-bit random keys (ties have probability about
    n^2 / 2^65), on a numpy view of the bytes (no object per element)."""
    check_packed(data)
    n = len(data) // POINT_BYTES
    if n < 2:
        return bytes(data)
    keys = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(n, POINT_BYTES)
    return rows[order].tobytes()


def pack(points: Sequence[bytes]) -> bytes:
    return b"".join(points)


def unpack(data: bytes) -> list[bytes]:
    check_packed(data)
    return [data[i : i + POINT_BYTES] for i in range(0, len(data), POINT_BYTES)]
