"""What the coordinator sees: every message it receives in a round, recorded.

With the noise off (exact integer vectors in, the test-only path), the masked vectors
are indistinguishable from uniform, no single node's vector can be taken out of the
coordinator's whole view, and the unmasked sum is exact."""

from __future__ import annotations

import math

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tessera import keys
from tessera.secagg import SecAggClient, SecAggServer, Stage, crypto, local, shamir
from tessera.secagg.session import raw_public
from tessera.wire.v1 import secagg_pb2 as pb

N, T, LENGTH = 8, 5, 4096


def _chi_square_bytes(values: np.ndarray) -> list[float]:
    """Chi-square statistic (256 bins) of each of the 8 byte lanes of u64 cells."""
    lanes = values.astype("<u8").view(np.uint8).reshape(-1, 8)
    expected = len(values) / 256
    out = []
    for lane in range(8):
        counts = np.bincount(lanes[:, lane], minlength=256)
        out.append(float(((counts - expected) ** 2 / expected).sum()))
    return out


# df = 255: mean 255, sd sqrt(510) ~ 22.6. Seven sd above the mean is p < 1e-9 (Wilson-
# Hilferty), so a uniform vector essentially never fails, and a structured one always does.
_CHI2_LIMIT = 255 + 7 * math.sqrt(2 * 255)


def _uniform(values: np.ndarray) -> bool:
    return max(_chi_square_bytes(values)) < _CHI2_LIMIT


def test_the_coordinator_view_reveals_no_single_vector_and_the_sum_is_exact() -> None:
    ids = {i: keys.SigningKey.generate() for i in range(1, N + 1)}
    rng = np.random.default_rng(42)
    # Structured, low-entropy inputs: small counts, many zeros; nothing noisy.
    vectors = {
        i: (rng.poisson(3, LENGTH) * (rng.random(LENGTH) < 0.5)).astype(np.int64) for i in ids
    }
    assert not _uniform(vectors[1].view(np.uint64))  # the test can tell structure
    session = local.make_session("req-view/secagg/1", ids, T, LENGTH)
    server = SecAggServer(session)
    result = local.run(session, ids, vectors, drop={4: Stage.MASKED_INPUT}, server=server)
    view = server.transcript  # every message the coordinator accepted

    # The unmasked sum is exact, and says who is in it.
    assert result.contributors == (1, 2, 3, 5, 6, 7, 8) and result.dropped == (4,)
    np.testing.assert_array_equal(result.total, sum(vectors[i] for i in result.contributors))

    masked = {
        m.masked_input.sender: np.frombuffer(m.masked_input.masked, dtype="<u8")
        for m in view
        if m.HasField("masked_input")
    }
    assert set(masked) == set(result.contributors)
    for u, y in masked.items():
        # Each masked vector passes a uniformity test on every byte, low bits included.
        assert _uniform(y), u
        # The exact vector's bytes appear nowhere in anything the coordinator received.
        window = vectors[u][:64].astype("<i8").tobytes()
        assert all(window not in m.SerializeToString() for m in view)

    # The coordinator learns survivors' self-mask seeds at unmask. Even with the seed
    # removed, what is left of a survivor's vector is still uniform: the pairwise masks
    # with the other survivors stay, because no survivor's mask key is ever revealed.
    seeds: dict[int, dict[int, bytes]] = {}
    for m in view:
        if m.HasField("unmask"):
            for s in m.unmask.shares:
                assert s.owner not in masked or s.kind == pb.SECAGG_SHARE_KIND_SEED
                if s.kind == pb.SECAGG_SHARE_KIND_SEED:
                    seeds.setdefault(s.owner, {})[m.unmask.sender] = s.share
    commitments = {
        m.share_keys.sender: m.share_keys.seed_commitment for m in view if m.HasField("share_keys")
    }
    for u, y in masked.items():
        holders = sorted(seeds[u])
        seed = shamir.combine({h: seeds[u][h] for h in holders[:T]})
        assert crypto.seed_commitment(server.context, u, seed) == commitments[u]
        residual = y - crypto.self_mask(seed, server.context, LENGTH)
        assert _uniform(residual), u
        assert _uniform(residual - vectors[u].view(np.uint64)), u
        # Fewer than t shares of a seed rebuild something else (checked by commitment).
        try:
            wrong = shamir.combine({h: seeds[u][h] for h in holders[: T - 1]})
        except shamir.ShamirError:
            continue
        assert crypto.seed_commitment(server.context, u, wrong) != commitments[u]


def test_a_coalition_below_t_cannot_rebuild_a_masking_key() -> None:
    """t - 1 nodes pooling the shares they hold of a survivor's masking key get a value
    that is not the key: its public key does not match the advertised one."""
    ids = {i: keys.SigningKey.generate() for i in range(1, 6)}
    session = local.make_session("req-view/secagg/2", ids, 3, 4)
    clients = {i: SecAggClient(session, i, k) for i, k in ids.items()}
    server = SecAggServer(session)
    for c in clients.values():
        server.accept_advertise(c.advertise())
    advertised = server.close_advertise()
    for c in clients.values():
        server.accept_share_keys(c.share_keys(advertised))
    for i, share_set in server.close_share_keys().items():
        clients[i].masked_input(share_set, np.zeros(4, dtype=np.int64))
    held = {h: clients[h]._held[1].mask_key for h in (2, 3)}  # two colluders, t = 3
    advertised_key = next(a.mask_public for a in advertised.advertisements if a.sender == 1)
    try:
        guess = shamir.combine(held)
    except shamir.ShamirError:
        return
    assert raw_public(X25519PrivateKey.from_private_bytes(guess).public_key()) != advertised_key
