"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

The field is larger than any 32-byte secret, so a secret is one field element and a
share is one point (x, f(x)) of a random polynomial of degree t - 1 with f(0) = secret.
Any t shares give the secret back; any t - 1 shares are uniformly distributed and
say nothing about it. Coefficients come from `secrets` (the operating system's CSPRNG).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

# The Mersenne prime 2^521 - 1.
PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)


class ShamirError(ValueError):
    """Shares that cannot give back a secret."""


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Shares of `secret` at the nonzero x-coordinates `xs`; any `threshold` rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"a secret is {SECRET_BYTES} bytes")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ShamirError("x-coordinates must be distinct and nonzero")
    if not 1 <= threshold <= len(xs):
        raise ShamirError("threshold must be between 1 and the number of shares")
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    out = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        out[x] = y.to_bytes(SHARE_BYTES, "big")
    return out


def combine(shares: Mapping[int, bytes]) -> bytes:
    """The secret at f(0), by Lagrange interpolation through all of `shares`.

    Give exactly t shares: more than t also works when they are consistent, fewer
    than t give a random-looking value (detected by the caller's commitment check).
    """
    if not shares:
        raise ShamirError("no shares")
    points = []
    for x, raw in shares.items():
        if len(raw) != SHARE_BYTES:
            raise ShamirError("a share has the wrong length")
        y = int.from_bytes(raw, "big")
        if not 0 < x < PRIME or y >= PRIME:
            raise ShamirError("a share is outside the field")
        points.append((x, y))
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise ShamirError("the shares do not rebuild a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")
