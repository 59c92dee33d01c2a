"""A 4 MB Execute carrying 28,000 copies of one valid approval costs the node what one
copy does: the copies are dropped before any signature is verified."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tessera import approvals, keys
from tessera.wire.v1 import node_pb2
from tests.adversarial import support as sp

COPIES = 28_000


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sp.Cluster]:
    with sp.cluster(tmp_path_factory.mktemp("flood")) as c:
        yield c


def test_28000_copies_of_one_approval_cost_no_more_than_one(
    node: sp.Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified = [0]
    real = keys.PublicKey.verify

    def counted(self: keys.PublicKey, domain: bytes, message: bytes, sig: bytes) -> bool:
        if domain == keys.TEMPLATE_APPROVAL:
            verified[0] += 1
        return real(self, domain, message, sig)

    monkeypatch.setattr(keys.PublicKey, "verify", counted)
    template = sp.template_dict(node.fed)

    def timed(copies: int, day: int) -> float:
        request = sp.execute(node.fed, template, {"on_date": f"2025-03-{day:02d}"})
        flood = node_pb2.ExecuteRequest()
        flood.CopyFrom(request)
        one = flood.template.approvals[0]
        for _ in range(copies - 1):
            flood.template.approvals.append(one)
        if copies > 1:
            assert flood.ByteSize() > 3_500_000
        verified[0] = 0
        approvals.forget_verified()  # count the checks a first sight of them costs
        start = time.perf_counter()
        reply = node.stub().Execute(flood, timeout=60)
        elapsed = time.perf_counter() - start
        assert reply.answer.dataset == "ssda903"
        return elapsed

    single = timed(1, 1)
    single_checks = verified[0]
    flooded = timed(COPIES, 2)
    assert verified[0] == single_checks == 2  # the two distinct trusted approvals
    # Before: 2.4 s of signature checks. Now the extra cost is moving 4 MB of protobuf.
    print(f"\nExecute, 1 approval copy: {single * 1e3:.0f} ms; {COPIES}: {flooded * 1e3:.0f} ms")
    assert flooded < single + 1.0, (single, flooded)
