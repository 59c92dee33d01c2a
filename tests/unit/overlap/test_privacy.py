"""No leakage, padding, DP dummies and the small-overlap guard."""

from __future__ import annotations

import os
import statistics
from collections import defaultdict

from tessera.overlap import group
from tessera.overlap.protocol import (
    COUNTER,
    Counter,
    Kind,
    OverlapQuery,
    Party,
    bucket,
    run_local,
)
from tessera.overlap.synthetic import Rows, brute_force
from tessera.synth import nhs_number
from tessera.synth.rng import make_rng
from tessera.wire.v1 import overlap_pb2 as pb
from tests.unit.overlap.conftest import NodeNoise

Views = dict[int, list[bytes]]


def _sets(seed: int, sizes: tuple[int, int, int], ab: int, abc: int) -> list[Rows]:
    """Three agencies: `abc` children in all three, `ab` more in a and b only."""
    numbers = nhs_number.generate_unique(make_rng(seed, "overlap-test"), sum(sizes) + ab + abc)
    it = iter(numbers)
    common = [next(it) for _ in range(abc)]
    pair = [next(it) for _ in range(ab)]
    a = common + pair + [next(it) for _ in range(sizes[0] - abc - ab)]
    b = common + pair + [next(it) for _ in range(sizes[1] - abc - ab)]
    c = common + [next(it) for _ in range(sizes[2] - abc)]
    return [[(x, i % 2) for i, x in enumerate(s)] for s in (a, b, c)]


def _run(
    q: OverlapQuery, inputs: list[Rows], noise: NodeNoise | None = None
) -> tuple[Views, Counter, list[int | None]]:
    views: Views = defaultdict(list)
    parties = [Party(q, i, rows, noise) for i, rows in enumerate(inputs)]
    counter = Counter(q)
    result = run_local(parties, counter, lambda to, data: views[to].append(data))
    return views, counter, [c.value for c in result.cells]


def _points(messages: list[bytes]) -> list[bytes]:
    out = []
    for data in messages:
        m = pb.OverlapMessage.FromString(data)
        if m.WhichOneof("body") == "blinded":
            out += group.unpack(m.blinded.points)
    return out


def _query(epsilon: float | None = None, kind: Kind = Kind.ALL) -> OverlapQuery:
    return OverlapQuery(os.urandom(16), ("a", "b", "c"), ("x", "y"), kind, 0, epsilon=epsilon)


def test_no_identifier_leaves_a_node_raw_or_blinded_the_same_way_twice() -> None:
    inputs = _sets(1, (300, 200, 150), ab=40, abc=25)
    ids = {x for rows in inputs for x, _ in rows if x}
    v1, _, r1 = _run(_query(), inputs)
    v2, _, r2 = _run(_query(), inputs)
    assert r1 == r2 == [13, 12]  # the same question on the same data, two fresh queries
    everything = [d for views in (v1, v2) for msgs in views.values() for d in msgs]
    blob = b"".join(everything)
    for x in ids:  # no raw identifier, in any form, in any message anyone receives
        assert x.encode() not in blob
        assert f"{x[:3]} {x[3:6]} {x[6:]}".encode() not in blob
        assert int(x).to_bytes(8, "big") not in blob and int(x).to_bytes(8, "little") not in blob
    # Nor an unblinded hash of one, under either query's hashing.
    sent1 = set(_points([d for msgs in v1.values() for d in msgs]))
    sent2 = set(_points([d for msgs in v2.values() for d in msgs]))
    for views in (v1, v2):
        for msgs in views.values():
            for data in msgs:
                m = pb.OverlapMessage.FromString(data)
                if m.WhichOneof("body") == "blinded":
                    hashed = set(group.hash_ids(m.blinded.query_id, sorted(ids)))
                    assert not hashed & set(group.unpack(m.blinded.points))
    # No element, at any stage, is blinded the same way in the two queries.
    assert sent1 and sent2 and not sent1 & sent2


def test_nodes_see_only_bucketed_sizes_so_no_pairwise_overlap() -> None:
    """Two regions whose a∩b differ (40 vs 0) but with the same sizes and a∩b∩c: each
    node receives messages of exactly the same shape; only random-looking points differ."""

    def shape(views: Views, party: int) -> list[tuple[str, int, int]]:
        out = []
        for data in views[party]:
            m = pb.OverlapMessage.FromString(data)
            which = m.WhichOneof("body")
            n = len(m.blinded.points) // 32 if which == "blinded" else 0
            out.append((str(which), n, m.blinded.owner if which == "blinded" else -1))
        return sorted(out)

    world1 = _sets(2, (300, 200, 150), ab=40, abc=25)
    world2 = _sets(2, (300, 200, 150), ab=0, abc=25)
    v1, _, r1 = _run(_query(), world1)
    v2, _, r2 = _run(_query(), world2)
    assert r1 == r2
    for party in range(3):
        assert shape(v1, party) == shape(v2, party)
        for data in v1[party]:
            m = pb.OverlapMessage.FromString(data)
            if m.WhichOneof("body") == "blinded":
                assert m.blinded.owner != party  # a node never gets its own set back
                n = len(m.blinded.points) // 32
                assert n == bucket(n)  # every set a node sees is padded to a bucket


def test_with_noise_the_counter_view_is_dummied_and_the_answer_noisy() -> None:
    """Noise on: the counter's view of the pairwise cell a∩b (not asked for) and of the
    released cell carry DP dummies, so repeated runs see different values around the
    truth; the answer is unbiased, with OpenDP's loss reported and charged."""
    inputs = _sets(3, (300, 200, 150), ab=40, abc=25)
    q0 = _query()
    (want, _) = brute_force(q0, inputs)
    pairwise, released, answers = [], [], []
    for _ in range(12):
        noise = NodeNoise()
        q = _query(epsilon=1.0)
        _, counter, values = _run(q, inputs, noise)
        view = counter.view()
        pairwise.append(view[(0b011, 0)] + view[(0b011, 1)])
        released.append(view[(0b111, 0)])
        answers.append(values[0])
        kinds = [k for k, _ in noise.calls]
        assert kinds.count("dummies") == 1 and kinds.count("counts") == 3
        assert all(0 < loss <= 1.0 + 1e-9 for _, loss in noise.calls)
    truth_ab = 40  # in a and b only, both categories together
    assert len(set(pairwise)) > 1 and len(set(released)) > 1
    assert min(pairwise) > truth_ab  # dummies are only ever added: the shift lifts cells
    assert all(a is not None for a in answers)
    mean = statistics.fmean(a for a in answers if a is not None)
    assert abs(mean - want[0]) < 3  # discrete Laplace at scale 2, 12 runs


def test_small_overlap_guard_suppresses_cells_below_the_minimum() -> None:
    inputs = _sets(4, (100, 100, 100), ab=0, abc=7)
    q = OverlapQuery(os.urandom(16), ("a", "b", "c"), ("x", "y"), Kind.ALL, 0, min_count=4)
    _, _, values = _run(q, inputs)
    assert values == [4, None]  # 4 and 3 children: the 3 is below the minimum of 4
    q2 = OverlapQuery(
        os.urandom(16), ("a", "b", "c"), ("x", "y"), Kind.ALL, 0, min_count=10, epsilon=1.0
    )
    noise = NodeNoise()
    parties = [Party(q2, i, rows, noise) for i, rows in enumerate(inputs)]
    result = run_local(parties, Counter(q2))
    assert all(c.value is None or c.value >= 10 for c in result.cells)
    assert result.epsilon is not None and 0 < result.epsilon <= 1.0 + 1e-9
    assert 0 < result.delta < 1e-6
    assert all(c.variance > 0 for c in result.cells)


def test_sizes_are_padded_to_buckets() -> None:
    q = OverlapQuery(os.urandom(16), ("a", "b"), ("x",), Kind.ALL, 0)
    numbers = nhs_number.generate_unique(make_rng(5, "pad"), 1100)
    inputs: list[Rows] = [[(x, 0) for x in numbers[:1000]], [(x, 0) for x in numbers[900:]]]
    views: Views = defaultdict(list)
    parties = [Party(q, i, rows) for i, rows in enumerate(inputs)]
    result = run_local(parties, Counter(q), lambda to, d: views[to].append(d))
    assert result.cells[0].value == 100
    sizes = sorted(len(p) // 1 for p in [_points(views[i]) for i in (0, 1, COUNTER)])
    assert sizes == sorted([bucket(200), bucket(1000), bucket(200) + bucket(1000)])
    assert bucket(1000) == 1024 and bucket(200) == 208


def test_sets_travel_in_chunks_and_the_last_key_reshuffles_the_whole_set() -> None:
    inputs = _sets(6, (300, 200, 150), ab=40, abc=25)
    q = OverlapQuery(os.urandom(16), ("a", "b", "c"), ("x", "y"), Kind.ALL, 0, chunk_size=50)
    views, _, values = _run(q, inputs)
    assert values == brute_force(q, inputs)[0]
    chunks: dict[tuple[int, int, int], list[list[bytes]]] = defaultdict(list)
    for to in (0, 1, 2, COUNTER):
        for data in views[to]:
            m = pb.OverlapMessage.FromString(data)
            if m.WhichOneof("body") == "blinded":
                b = m.blinded
                assert len(b.points) <= 50 * 32 and b.chunks > 1
                chunks[(b.owner, b.subset, b.hops)].append(group.unpack(b.points))
    # The owner's key and the next: the counter (relaying) sees chunk j become chunk j.
    # After the last key the whole set was shuffled: no final chunk is the image of one
    # earlier chunk (each final chunk mixes elements from several of them).
    a0 = [len(c) for c in chunks[(0, 0, 1)]]
    final = chunks[(0, 0, 3)]
    assert sum(a0) == sum(len(c) for c in final)
    assert len(final) == len(chunks[(0, 0, 1)]) > 2
