"""Both blinding backends compute X25519: the same bytes, commuting, refusing the same points."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.overlap import group

BACKENDS = [(group.OPENSSL, 1), (group.SODIUM, 1), (group.SODIUM, 3), (group.AUTO, 2)]

# RFC 7748, section 5.2, first vector.
RFC_SCALAR = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
RFC_U = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
RFC_OUT = bytes.fromhex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")

# u-coordinates of small order (and their non-canonical encodings): libsodium's list.
SMALL_ORDER = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ec" + "ff" * 30 + "7f"),
    bytes.fromhex("ed" + "ff" * 30 + "7f"),
    bytes.fromhex("ee" + "ff" * 30 + "7f"),
]


@pytest.mark.parametrize(("backend", "threads"), BACKENDS)
def test_each_backend_is_rfc_7748_x25519(backend: str, threads: int) -> None:
    assert group.blind_packed(RFC_SCALAR, RFC_U, backend=backend, threads=threads) == RFC_OUT


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.lists(st.binary(min_size=32, max_size=32)))
def test_backends_agree_on_random_inputs(key: bytes, points: list[bytes]) -> None:
    """Any 32 bytes, the top bit and non-canonical values included."""
    data = b"".join(points)
    try:
        want = group.blind_packed(key, data, backend=group.OPENSSL)
    except group.BadPoint:  # a random small-order input: both must refuse it
        with pytest.raises(group.BadPoint):
            group.blind_packed(key, data, backend=group.SODIUM)
        return
    assert group.blind_packed(key, data, backend=group.SODIUM) == want
    assert group.blind_packed(key, data, backend=group.SODIUM, threads=2) == want


def test_backends_agree_across_a_threaded_split() -> None:
    """Large enough that the sodium backend splits the set across threads."""
    key = group.random_scalar()
    data = group.hash_items(os.urandom(16), [2] * 5000, [None] * 5000)
    want = group.blind_packed(key, data, backend=group.OPENSSL)
    for threads in (1, 2, 4):
        assert group.blind_packed(key, data, backend=group.SODIUM, threads=threads) == want


@pytest.mark.parametrize(("first", "second"), [(a, b) for a, _ in BACKENDS for b, _ in BACKENDS])
def test_blinding_commutes_within_and_across_backends(first: str, second: str) -> None:
    a, b = group.random_scalar(), group.random_scalar()
    points = group.pack(group.hash_ids(b"q" * 16, ["9434765919", "9434765870", "9434765889"]))
    ab = group.blind_packed(b, group.blind_packed(a, points, backend=first), backend=second)
    ba = group.blind_packed(a, group.blind_packed(b, points, backend=second), backend=first)
    assert ab == ba and ab != points and len(set(group.unpack(ab))) == 3


@pytest.mark.parametrize(("backend", "threads"), BACKENDS)
@pytest.mark.parametrize("point", SMALL_ORDER)
def test_small_order_points_are_refused_by_both(backend: str, threads: int, point: bytes) -> None:
    key = group.random_scalar()
    good = group.pack(group.hash_ids(b"q" * 16, ["9434765919"]))
    for top in (0, 0x80):  # bit 255 is ignored by X25519, so the same point
        bad = point[:31] + bytes([point[31] | top])
        with pytest.raises(group.BadPoint, match="small order"):
            group.blind_packed(key, good * 3000 + bad, backend=backend, threads=threads)


@pytest.mark.parametrize("backend", [group.OPENSSL, group.SODIUM])
def test_lengths_and_unknown_backends_are_refused(backend: str) -> None:
    with pytest.raises(group.BadPoint, match="multiple of 32"):
        group.blind_packed(group.random_scalar(), b"\x09" * 33, backend=backend)
    assert group.blind_packed(group.random_scalar(), b"", backend=backend) == b""
    with pytest.raises(ValueError, match="no blinding backend"):
        group.blind_packed(group.random_scalar(), b"", backend="nope")


def test_configure_refuses_what_it_cannot_use() -> None:
    with pytest.raises(ValueError, match="no blinding backend"):
        group.configure("nope")
    with pytest.raises(ValueError, match="at least 1"):
        group.configure(group.AUTO, 0)


def test_hashed_elements_are_the_same_however_they_are_made() -> None:
    qid = os.urandom(16)
    ids, seeds = ["9434765919", "9434765870"], [os.urandom(32), os.urandom(32)]
    kinds = [0, 1, 2, 0, 1, 2]
    values: list[str | bytes | None] = [ids[0], seeds[0], None, ids[1], seeds[1], None]
    packed = group.unpack(group.hash_items(qid, kinds, values))
    assert [packed[0], packed[3]] == group.hash_ids(qid, ids)
    assert [packed[1], packed[4]] == group.hash_dummies(qid, seeds)
    pads = [packed[2], packed[5]]
    assert pads[0] != pads[1] and not set(pads) & set(packed[:2] + packed[3:5])
    assert all(p[31] < 0x80 for p in packed)  # u < 2^255, as X25519 reads it


def test_shuffle_is_a_permutation_of_whole_elements() -> None:
    data = group.hash_items(os.urandom(16), [2] * 500, [None] * 500)
    shuffled = group.shuffle_packed(data)
    assert shuffled != data
    assert sorted(group.unpack(shuffled)) == sorted(group.unpack(data))
    assert group.shuffle_packed(data[:32]) == data[:32]
