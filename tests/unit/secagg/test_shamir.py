"""Shamir t-of-n over GF(2^521 - 1): any t shares rebuild, t - 1 pin down nothing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.secagg import shamir


@st.composite
def _setups(draw: st.DrawFn) -> tuple[bytes, int, list[int]]:
    n = draw(st.integers(2, 9))
    t = draw(st.integers(1, n))
    xs = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    return draw(st.binary(min_size=32, max_size=32)), t, xs


@settings(max_examples=60, deadline=None)
@given(_setups())
def test_any_t_shares_rebuild_the_secret(setup: tuple[bytes, int, list[int]]) -> None:
    secret, t, xs = setup
    shares = shamir.split(secret, t, xs)
    for subset in itertools.islice(itertools.combinations(xs, t), 20):
        assert shamir.combine({x: shares[x] for x in subset}) == secret
    # More than t consistent shares give the same answer.
    assert shamir.combine(shares) == secret


@settings(max_examples=60, deadline=None)
@given(_setups(), st.binary(min_size=32, max_size=32))
def test_t_minus_one_shares_are_consistent_with_every_secret(
    setup: tuple[bytes, int, list[int]], other: bytes
) -> None:
    """For any t - 1 shares and any candidate secret there is a polynomial through both:
    the shares held by t - 1 colluders carry no information about the secret."""
    secret, t, xs = setup
    if t < 2:
        return
    shares = shamir.split(secret, t, xs)
    known = {x: shares[x] for x in xs[: t - 1]}
    # The polynomial through (0, other) and the known shares has a value at a fresh x:
    # that value, as a t-th share, makes the set rebuild `other`, not `secret`.
    fresh = max(xs) + 1
    points = {0: int.from_bytes(other, "big")} | {
        x: int.from_bytes(y, "big") for x, y in known.items()
    }
    value = 0
    for xi, yi in points.items():
        num, den = 1, 1
        for xj in points:
            if xj != xi:
                num = num * (fresh - xj) % shamir.PRIME
                den = den * (xi - xj) % shamir.PRIME
        value = (value + yi * num * pow(den, -1, shamir.PRIME)) % shamir.PRIME
    forged = known | {fresh: value.to_bytes(shamir.SHARE_BYTES, "big")}
    assert shamir.combine(forged) == other


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(shamir.ShamirError):
        shamir.split(b"short", 2, [1, 2])
    with pytest.raises(shamir.ShamirError):
        shamir.split(bytes(32), 3, [1, 2])
    with pytest.raises(shamir.ShamirError):
        shamir.split(bytes(32), 2, [1, 1])
    with pytest.raises(shamir.ShamirError):
        shamir.split(bytes(32), 2, [0, 1])
    with pytest.raises(shamir.ShamirError):
        shamir.combine({1: b"\x00" * 5})
    with pytest.raises(shamir.ShamirError):
        shamir.combine({1: b"\xff" * shamir.SHARE_BYTES})
    with pytest.raises(shamir.ShamirError):
        shamir.combine({})
