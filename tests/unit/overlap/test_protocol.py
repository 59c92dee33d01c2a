"""The blinding commutes; messages out of place are refused with precise errors."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.overlap import group, seal
from tessera.overlap.protocol import (
    COUNTER,
    MIN_BUCKET,
    Counter,
    Kind,
    OverlapError,
    OverlapQuery,
    Party,
    bucket,
    recipient,
)
from tessera.wire.v1 import overlap_pb2 as pb


def test_blinding_commutes() -> None:
    a, b = group.random_scalar(), group.random_scalar()
    points = group.hash_ids(b"q" * 16, ["9434765919", "9434765870"])
    ab = group.blind(b, group.blind(a, points))
    ba = group.blind(a, group.blind(b, points))
    assert ab == ba and ab != points and len(set(ab)) == 2


def test_hashing_is_bound_to_the_query() -> None:
    one = group.hash_ids(b"1" * 16, ["9434765919"])
    two = group.hash_ids(b"2" * 16, ["9434765919"])
    assert one != two
    assert group.hash_dummies(b"1" * 16, [b"9434765919"]) != one


@settings(max_examples=200)
@given(st.integers(0, 10**7))
def test_buckets(n: int) -> None:
    b = bucket(n)
    assert b >= n and b >= MIN_BUCKET
    assert b <= max(MIN_BUCKET, n + n // 8 + 1)
    assert bucket(b) == b and bucket(n + 1) >= b


def _query(**kw: object) -> OverlapQuery:
    return OverlapQuery(os.urandom(16), ("a", "b", "c"), ("x",), Kind.ALL, 0, **kw)  # type: ignore[arg-type]


def _ready(q: OverlapQuery) -> tuple[list[Party], Counter]:
    parties = [Party(q, i, [("9434765919", 0)]) for i in range(q.n)]
    counter = Counter(q)
    hellos = [p.hello() for p in parties] + [counter.hello()]
    for p in parties:
        for j, h in enumerate(hellos):
            if j != p.index:
                p.handle(h)
    return parties, counter


def test_sets_out_of_place_are_refused() -> None:
    q = _query()
    parties, counter = _ready(q)
    first = parties[0].start()[0]
    assert recipient(q, first) == 1
    with pytest.raises(OverlapError, match="not due at this party"):
        parties[2].handle(first)  # hop 1 of a's set belongs to b
    other = _query()
    others, _ = _ready(other)
    with pytest.raises(OverlapError, match="another query"):
        parties[1].handle(others[0].start()[0])
    with pytest.raises(OverlapError, match="has not been through every party"):
        counter.handle(first)
    with pytest.raises(OverlapError, match="has not received every set"):
        counter.result()
    with pytest.raises(OverlapError, match="already sent"):
        parties[0].start()
    second = parties[1].handle(first)[0]
    third = parties[2].handle(second)[0]
    assert recipient(q, third) == COUNTER
    counter.handle(third)
    with pytest.raises(OverlapError, match="already complete"):
        counter.handle(third)


def test_bad_points_and_bad_bytes_are_refused() -> None:
    q = _query()
    parties, _ = _ready(q)
    bad = pb.OverlapMessage(
        blinded=pb.OverlapBlindedSet(
            query_id=q.query_id,
            step=pb.OVERLAP_STEP_BLIND,
            owner=0,
            hops=1,
            chunks=1,
            points=b"\x00" * 32,  # u = 0: small order
        )
    ).SerializeToString()
    with pytest.raises(group.BadPoint):
        parties[1].handle(bad)
    with pytest.raises(OverlapError, match="not an overlap message"):
        parties[1].handle(b"\xff\xff\xff")
    short = pb.OverlapMessage(
        blinded=pb.OverlapBlindedSet(
            query_id=q.query_id,
            step=pb.OVERLAP_STEP_BLIND,
            owner=0,
            hops=1,
            chunks=1,
            points=b"\x00" * 31,
        )
    ).SerializeToString()
    with pytest.raises(group.BadPoint, match="multiple of 32"):
        parties[1].handle(short)


def test_sealed_messages_are_bound_to_query_step_and_recipient() -> None:
    key = seal.new_key()
    pub = seal.public_bytes(key)
    qid = os.urandom(16)
    msg = seal.seal(qid, pb.OVERLAP_STEP_DUMMY_PLAN, 0, 1, pub, b"secret")
    assert seal.open_sealed(msg, key, qid, pb.OVERLAP_STEP_DUMMY_PLAN, 1) == b"secret"
    for bad_q, step, to in (
        (os.urandom(16), pb.OVERLAP_STEP_DUMMY_PLAN, 1),
        (qid, pb.OVERLAP_STEP_PAD_REPORT, 1),
        (qid, pb.OVERLAP_STEP_DUMMY_PLAN, 2),
    ):
        with pytest.raises(seal.SealError):
            seal.open_sealed(msg, key, bad_q, step, to)
    redirected = pb.OverlapSealed()
    redirected.CopyFrom(msg)
    redirected.recipient = 2  # a relay moving it to another recipient
    with pytest.raises(seal.SealError):
        seal.open_sealed(redirected, key, qid, pb.OVERLAP_STEP_DUMMY_PLAN, 2)
    tampered = pb.OverlapSealed()
    tampered.CopyFrom(msg)
    tampered.ciphertext = bytes([msg.ciphertext[0] ^ 1]) + msg.ciphertext[1:]
    with pytest.raises(seal.SealError):
        seal.open_sealed(tampered, key, qid, pb.OVERLAP_STEP_DUMMY_PLAN, 1)
    with pytest.raises(seal.SealError):  # another recipient's key
        seal.open_sealed(msg, seal.new_key(), qid, pb.OVERLAP_STEP_DUMMY_PLAN, 1)


def test_a_noisy_query_needs_its_plan_and_a_noise_source() -> None:
    q = _query(epsilon=1.0)
    with pytest.raises(ValueError, match="needs a noise source"):
        Party(q, 0, [])
    with pytest.raises(ValueError, match="2 to 4"):
        OverlapQuery(os.urandom(16), ("a",), ("x",), Kind.ALL)
    with pytest.raises(ValueError, match="categories of dataset a"):
        OverlapQuery(os.urandom(16), ("a", "b"), ("x",), Kind.A_NOT_B, 1, a=0, b=1)
    with pytest.raises(ValueError, match="k must be"):
        OverlapQuery(os.urandom(16), ("a", "b"), ("x",), Kind.AT_LEAST_K, k=3)


def test_a_noisy_party_will_not_send_before_its_dummy_plan(node_noise: object) -> None:
    q = _query(epsilon=1.0)
    parties = [Party(q, i, [("9434765919", 0)], node_noise) for i in range(q.n)]  # type: ignore[arg-type]
    counter = Counter(q)
    hellos = [p.hello() for p in parties] + [counter.hello()]
    for p in parties:
        for j, h in enumerate(hellos):
            if j != p.index:
                p.handle(h)
    with pytest.raises(OverlapError, match="dummy plan has not arrived"):
        parties[1].start()
    with pytest.raises(OverlapError, match="only the noise party"):
        parties[1].dummy_plan()
    plans = parties[0].dummy_plan()
    assert [recipient(q, d) for d in plans] == [1, 2, COUNTER]
    with pytest.raises(seal.SealError):  # party 2's plan does not open at party 1
        parties[1].handle(plans[1])
    parties[1].handle(plans[0])
    with pytest.raises(OverlapError, match="second dummy plan"):
        parties[1].handle(plans[0])


def test_the_shuffle_is_a_uniform_permutation() -> None:
    from collections import Counter as Tally

    from tessera.overlap.protocol import _shuffle

    seen: Tally[tuple[int, ...]] = Tally()
    for _ in range(6000):
        items = [0, 1, 2]
        _shuffle(items)
        seen[tuple(items)] += 1
    assert len(seen) == 6 and all(800 < n < 1200 for n in seen.values())  # about 1000 each
