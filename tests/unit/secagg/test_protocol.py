"""The protocol end to end, in-process: exact sums, dropouts at every stage, replay
and tampering refused, and never a wrong sum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera import keys
from tessera.secagg import Aborted, Refused, SecAggClient, SecAggServer, Stage, crypto, local
from tessera.secagg.protocol import MAX_ABS_INPUT, IntVector
from tessera.wire.v1 import secagg_pb2 as pb

Ids = dict[int, keys.SigningKey]


def _vectors(n: int, length: int, seed: int) -> dict[int, IntVector]:
    rng = np.random.default_rng(seed)
    return {i: rng.integers(-(10**6), 10**6, length).astype(np.int64) for i in range(1, n + 1)}


def _roster(identities: Ids, n: int) -> Ids:
    return {i: identities[i] for i in range(1, n + 1)}


@settings(max_examples=20, deadline=None)
@given(st.integers(3, 8), st.data())
def test_the_sum_is_exact_for_every_size_and_threshold(n: int, data: st.DataObject) -> None:
    identities = {i: keys.SigningKey.generate() for i in range(1, n + 1)}
    t = data.draw(st.integers(n // 2 + 1, n), label="t")
    length = data.draw(st.integers(1, 40), label="length")
    vectors = _vectors(n, length, data.draw(st.integers(0, 2**32)))
    session = local.make_session(f"req/secagg/{n}-{t}", identities, t, length)
    result = local.run(session, identities, vectors)
    assert result.contributors == tuple(range(1, n + 1))
    assert result.dropped == () and result.excluded == ()
    np.testing.assert_array_equal(result.total, sum(vectors.values()))


def test_extreme_inputs_sum_exactly_and_out_of_range_ones_are_refused(identities: Ids) -> None:
    ids = _roster(identities, 8)
    top = MAX_ABS_INPUT - 1
    vectors = {i: np.array([top, -top, 0, (-1) ** i * top], dtype=np.int64) for i in ids}
    result = local.run(local.make_session("req/extreme", ids, 5, 4), ids, vectors)
    np.testing.assert_array_equal(result.total, [8 * top, -8 * top, 0, 0])
    vectors[3] = np.array([MAX_ABS_INPUT, 0, 0, 0], dtype=np.int64)
    with pytest.raises(Refused, match="outside the range"):
        local.run(local.make_session("req/extreme2", ids, 5, 4), ids, vectors)


@pytest.mark.parametrize("stage", local.STAGES)
def test_one_node_dropping_at_each_stage_gives_the_right_total(
    identities: Ids, stage: Stage
) -> None:
    ids = _roster(identities, 5)
    vectors = _vectors(5, 30, 7)
    session = local.make_session(f"req/drop/{stage.value}", ids, 3, 30)
    result = local.run(session, ids, vectors, drop={2: stage})
    expected_in = stage in (Stage.CONSISTENCY, Stage.UNMASK)  # its input had arrived
    assert (2 in result.contributors) is expected_in
    if stage is Stage.MASKED_INPUT:
        assert result.dropped == (2,)  # shared keys, sent no input: its masks removed
    if stage in (Stage.ADVERTISE, Stage.SHARE_KEYS):
        assert result.excluded == (2,)
    expected = sum(vectors[i] for i in result.contributors)
    np.testing.assert_array_equal(result.total, expected)


@settings(max_examples=25, deadline=None)
@given(
    st.dictionaries(st.integers(1, 6), st.sampled_from(local.STAGES), max_size=4),
    st.integers(4, 6),
)
def test_any_dropout_pattern_gives_the_right_total_or_nothing(
    drop: dict[int, Stage], t: int
) -> None:
    ids = {i: keys.SigningKey.generate() for i in range(1, 7)}
    vectors = _vectors(6, 12, 11)
    session = local.make_session("req/drops", ids, t, 12)
    try:
        result = local.run(session, ids, vectors, drop=drop)
    except Aborted as e:
        assert "threshold" in str(e)
        return
    assert len(result.contributors) >= t
    np.testing.assert_array_equal(result.total, sum(vectors[i] for i in result.contributors))


def test_too_few_at_any_stage_releases_nothing_and_says_why(identities: Ids) -> None:
    ids = _roster(identities, 5)
    vectors = _vectors(5, 8, 3)
    for stage in local.STAGES:
        session = local.make_session(f"req/few/{stage.value}", ids, 4, 8)
        with pytest.raises(Aborted, match="threshold is 4"):
            local.run(session, ids, vectors, drop={1: stage, 2: stage})


class _Round:
    """A session driven by hand, to reach into the middle of it."""

    def __init__(self, ids: Ids, session_id: str, t: int = 3, length: int = 6) -> None:
        self.ids = ids
        self.session = local.make_session(session_id, ids, t, length)
        self.server = SecAggServer(self.session)
        self.clients = {i: SecAggClient(self.session, i, k) for i, k in ids.items()}
        self.vectors = _vectors(len(ids), length, 5)

    def advertise(self) -> pb.SecAggAdvertiseSet:
        for c in self.clients.values():
            self.server.accept_advertise(c.advertise())
        return self.server.close_advertise()

    def share(self) -> dict[int, pb.SecAggShareSet]:
        advertised = self.advertise()
        for c in self.clients.values():
            self.server.accept_share_keys(c.share_keys(advertised))
        return self.server.close_share_keys()

    def mask(self) -> pb.SecAggConsistencyRequest:
        for i, share_set in self.share().items():
            self.server.accept_masked_input(
                self.clients[i].masked_input(share_set, self.vectors[i])
            )
        return self.server.close_masked_input()

    def confirm(self) -> pb.SecAggUnmaskRequest:
        request = self.mask()
        for i in request.survivors:
            self.server.accept_consistency(self.clients[i].consistency(request))
        return self.server.close_consistency()


def test_messages_replayed_into_another_session_are_refused(identities: Ids) -> None:
    ids = _roster(identities, 4)
    a, b = _Round(ids, "req-1/secagg/1"), _Round(ids, "req-1/secagg/2")
    adv_a = a.clients[1].advertise()
    with pytest.raises(Refused, match="another session"):
        b.server.accept_advertise(adv_a)
    # Even re-labelled with b's context, a's signature does not verify there.
    relabelled = pb.SecAggAdvertise()
    relabelled.CopyFrom(adv_a)
    relabelled.context = b.server.context
    with pytest.raises(Refused, match="not signed"):
        b.server.accept_advertise(relabelled)
    # A node refuses a whole set from another session.
    for c in list(a.clients.values())[1:]:
        a.server.accept_advertise(c.advertise())
    a.server.accept_advertise(adv_a)
    set_a = a.server.close_advertise()
    b.clients[2].advertise()
    with pytest.raises(Refused, match="another session"):
        b.clients[2].share_keys(set_a)
    assert b.clients[2].stage is Stage.ABORTED


def test_a_masked_input_replayed_into_another_session_is_refused(identities: Ids) -> None:
    ids = _roster(identities, 4)
    a, b = _Round(ids, "req-2/secagg/1"), _Round(ids, "req-2/secagg/2")
    a.mask()
    b.share()
    old = a.server.transcript[-1].masked_input
    with pytest.raises(Refused, match="another session"):
        b.server.accept_masked_input(old)
    moved = pb.SecAggMaskedInput()
    moved.CopyFrom(old)
    moved.context = b.server.context
    with pytest.raises(Refused, match="not signed"):
        b.server.accept_masked_input(moved)


def test_messages_out_of_stage_are_refused(identities: Ids) -> None:
    ids = _roster(identities, 4)
    r = _Round(ids, "req-3/secagg/1")
    unmask_req = pb.SecAggUnmaskRequest(context=r.server.context, survivors=[1, 2, 3, 4])
    with pytest.raises(Refused, match="stage"):
        r.clients[1].unmask(unmask_req)
    r.advertise()
    with pytest.raises(Refused, match="already advertised"):
        r.clients[2].advertise()
    with pytest.raises(Refused, match="stage"):
        r.server.accept_advertise(r.server.transcript[0].advertise)  # replayed, late
    # A signature made for one stage never verifies for another: node 1's consistency
    # signature, presented as its unmask signature, is refused.
    r2 = _Round(ids, "req-3/secagg/2")
    unmask = r2.confirm()
    real = r2.clients[1].unmask(unmask)
    forged = pb.SecAggUnmask()
    forged.CopyFrom(real)
    forged.signature = unmask.signatures[0].signature
    with pytest.raises(Refused, match="not signed"):
        r2.server.accept_unmask(forged)
    r2.server.accept_unmask(real)


def test_a_tampered_share_ciphertext_is_refused_by_its_recipient(identities: Ids) -> None:
    ids = _roster(identities, 4)
    r = _Round(ids, "req-4/secagg/1")
    sets = r.share()
    target = sets[3]
    bad = bytearray(target.shares[0].ciphertext)
    bad[5] ^= 1
    target.shares[0].ciphertext = bytes(bad)
    with pytest.raises(Refused, match="failed authentication"):
        r.clients[3].masked_input(target, r.vectors[3])
    assert r.clients[3].stage is Stage.ABORTED
    # The other nodes go on; node 3 counts as dropped and the sum is still exact.
    for i in (1, 2, 4):
        r.server.accept_masked_input(r.clients[i].masked_input(sets[i], r.vectors[i]))
    request = r.server.close_masked_input()
    for i in request.survivors:
        r.server.accept_consistency(r.clients[i].consistency(request))
    unmask = r.server.close_consistency()
    for i in request.survivors:
        r.server.accept_unmask(r.clients[i].unmask(unmask))
    result = r.server.finish()
    assert result.contributors == (1, 2, 4) and result.dropped == (3,)
    np.testing.assert_array_equal(result.total, r.vectors[1] + r.vectors[2] + r.vectors[4])


def test_a_share_moved_to_another_recipient_is_refused(identities: Ids) -> None:
    ids = _roster(identities, 4)
    r = _Round(ids, "req-5/secagg/1")
    sets = r.share()
    stolen = next(s for s in sets[2].shares if s.sender == 1)
    for s in sets[3].shares:
        if s.sender == 1:
            s.nonce, s.ciphertext = stolen.nonce, stolen.ciphertext
    with pytest.raises(Refused, match="failed authentication"):
        r.clients[3].masked_input(sets[3], r.vectors[3])


def test_tampered_masked_vectors_and_shares_are_refused_by_the_server(identities: Ids) -> None:
    ids = _roster(identities, 4)
    r = _Round(ids, "req-6/secagg/1")
    sets = r.share()
    msg = r.clients[1].masked_input(sets[1], r.vectors[1])
    data = bytearray(msg.masked)
    data[0] ^= 0x80
    msg.masked = bytes(data)
    with pytest.raises(Refused, match="not signed"):
        r.server.accept_masked_input(msg)


def test_a_node_refuses_an_inconsistent_or_repeated_unmask(identities: Ids) -> None:
    ids = _roster(identities, 5)
    r = _Round(ids, "req-7/secagg/1")
    unmask = r.confirm()
    # A survivor set other than the one the node signed.
    other = pb.SecAggUnmaskRequest()
    other.CopyFrom(unmask)
    del other.survivors[-1]
    with pytest.raises(Refused, match="differs"):
        r.clients[1].unmask(other)
    assert r.clients[1].stage is Stage.ABORTED
    # Too few signatures over the set.
    thin = pb.SecAggUnmaskRequest()
    thin.CopyFrom(unmask)
    del thin.signatures[2:]
    with pytest.raises(Refused, match="signed this survivor set"):
        r.clients[2].unmask(thin)
    # Answered once, never again.
    r.clients[3].unmask(unmask)
    with pytest.raises(Refused, match="stage"):
        r.clients[3].unmask(unmask)


def test_no_node_ever_has_both_its_seed_and_its_mask_key_revealed(identities: Ids) -> None:
    ids = _roster(identities, 6)
    session = local.make_session("req-8/secagg/1", ids, 4, 5)
    server = SecAggServer(session)
    vectors = _vectors(6, 5, 1)
    result = local.run(session, ids, vectors, drop={2: Stage.MASKED_INPUT}, server=server)
    kinds: dict[int, set[int]] = {}
    for m in server.transcript:
        if m.HasField("unmask"):
            for s in m.unmask.shares:
                kinds.setdefault(s.owner, set()).add(s.kind)
    assert all(len(k) == 1 for k in kinds.values())
    assert kinds[2] == {pb.SECAGG_SHARE_KIND_MASK_KEY}
    assert all(kinds[u] == {pb.SECAGG_SHARE_KIND_SEED} for u in result.contributors)


def test_a_lying_node_cannot_make_the_server_release_a_wrong_sum(identities: Ids) -> None:
    """A node that sends a wrong (but signed) share: the server's commitment and
    public-key checks catch it, and it rebuilds from honest shares or releases nothing."""
    ids = _roster(identities, 6)
    vectors = _vectors(6, 5, 2)

    def corrupt(msg: pb.SecAggMessage) -> pb.SecAggMessage:
        if msg.HasField("unmask") and msg.unmask.sender == 1:
            for s in msg.unmask.shares:
                s.share = bytes(len(s.share) - 1) + b"\x01"
            msg.unmask.signature = crypto.sign(
                ids[1],
                "unmask",
                msg.unmask.context,
                crypto.u32(1),
                crypto.digest(
                    b"".join(
                        crypto.u32(s.owner) + crypto.u32(s.kind) + crypto.lp(s.share)
                        for s in msg.unmask.shares
                    )
                ),
            )
        return msg

    session = local.make_session("req-9/secagg/1", ids, 4, 5)
    result = local.run(session, ids, vectors, drop={3: Stage.MASKED_INPUT}, tamper=corrupt)
    np.testing.assert_array_equal(result.total, sum(vectors[i] for i in result.contributors))
    # With exactly t shares, one of them bad: nothing is released.
    session = local.make_session("req-9/secagg/2", ids, 5, 5)
    with pytest.raises(Aborted, match="could not be rebuilt"):
        local.run(session, ids, vectors, drop={3: Stage.UNMASK}, tamper=corrupt)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": 2}, "above half"),
        ({"threshold": 9}, "above half"),
        ({"vector_length": 0}, "length"),
        ({"session_id": ""}, "no id"),
        ({"stage_deadline_ms": 0}, "deadline"),
    ],
)
def test_unusable_sessions_are_refused(
    identities: Ids, change: dict[str, object], message: str
) -> None:
    ids = _roster(identities, 4)
    session = local.make_session("req/bad", ids, 3, 4)
    for k, v in change.items():
        setattr(session, k, v)
    with pytest.raises(Refused, match=message):
        SecAggServer(session)
    with pytest.raises(Refused, match=message):
        SecAggClient(session, 1, ids[1])


def test_a_node_joins_only_as_its_own_participant(identities: Ids) -> None:
    ids = _roster(identities, 4)
    session = local.make_session("req/who", ids, 3, 4)
    with pytest.raises(Refused, match="not that participant"):
        SecAggClient(session, 2, ids[1])
    session.participants[1].node_key_id = session.participants[0].node_key_id
    with pytest.raises(Refused, match="twice"):
        SecAggServer(session)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(0, 10_000), st.integers(1, 255))
def test_a_flipped_byte_anywhere_gives_the_right_total_or_nothing(
    which: int, position: int, xor: int
) -> None:
    """One byte of one message (either direction) is corrupted on the wire. Whoever
    receives it refuses it, that node counts as failed, and the session either
    releases the exact total of its contributors or releases nothing."""
    ids = {i: keys.SigningKey.generate() for i in range(1, 6)}
    vectors = _vectors(5, 6, 9)
    seen = [0]

    def flip(msg: pb.SecAggMessage) -> pb.SecAggMessage:
        seen[0] += 1
        if seen[0] - 1 != which:
            return msg
        data = bytearray(msg.SerializeToString())
        data[position % len(data)] ^= xor
        out = pb.SecAggMessage()
        try:
            out.ParseFromString(bytes(data))
        except Exception:  # not parseable: the receiver would reject it outright
            return pb.SecAggMessage()
        return out

    refusals: list[tuple[int, Stage, str]] = []
    session = local.make_session("req/fuzz", ids, 3, 6)
    try:
        result = local.run(session, ids, vectors, tamper=flip, refusals=refusals)
    except Aborted:
        return
    np.testing.assert_array_equal(result.total, sum(vectors[i] for i in result.contributors))
    # A node whose message was refused before its input arrived is not in the total.
    early = (Stage.ADVERTISE, Stage.SHARE_KEYS, Stage.MASKED_INPUT)
    assert not {i for i, s, _ in refusals if s in early} & set(result.contributors)
