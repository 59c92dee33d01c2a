"""Verified approvals are cached, and the cache never changes an outcome: a changed
trust list or template is not served from it, and a bad signature is never kept."""

from __future__ import annotations

import pytest

from tessera import approvals, keys
from tessera.keys import SigningKey

DIGEST = "ab" * 32
OTHER = "cd" * 32


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = keys.PublicKey.verify

    def verify(self: keys.PublicKey, domain: bytes, message: bytes, sig: bytes) -> bool:
        calls[0] += 1
        return real(self, domain, message, sig)

    monkeypatch.setattr(keys.PublicKey, "verify", verify)
    approvals.forget_verified()
    return calls


def test_a_template_asked_again_is_not_verified_again(counted: list[int]) -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    trusted = {a.public.key_id: "A", b.public.key_id: "B"}
    sent = [approvals.sign(DIGEST, a), approvals.sign(DIGEST, b)]
    assert approvals.check(DIGEST, sent, trusted, 2) == ["A", "B"]
    assert counted[0] == 2
    for _ in range(5):
        assert approvals.check(DIGEST, sent, trusted, 2) == ["A", "B"]
    assert counted[0] == 2


def test_a_changed_trust_list_is_not_served_from_the_cache(counted: list[int]) -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    sent = [approvals.sign(DIGEST, a), approvals.sign(DIGEST, b)]
    both = {a.public.key_id: "A", b.public.key_id: "B"}
    assert approvals.check(DIGEST, sent, both, 2) == ["A", "B"]
    # B is no longer trusted: its cached signature counts for nothing.
    with pytest.raises(approvals.ApprovalRefused) as e:
        approvals.check(DIGEST, sent, {a.public.key_id: "A"}, 2)
    assert e.value.code == "PERMISSION_DENIED"
    assert "1 signature(s) are by approvers this node does not trust" in e.value.message
    # A higher threshold is applied afresh too.
    with pytest.raises(approvals.ApprovalRefused):
        approvals.check(DIGEST, sent, both, 3)


def test_changed_template_bytes_are_not_served_from_the_cache(counted: list[int]) -> None:
    a = SigningKey.generate()
    trusted = {a.public.key_id: "A"}
    good = approvals.sign(DIGEST, a)
    assert approvals.check(DIGEST, [good], trusted, 1) == ["A"]
    # The same signature offered for another template (another digest) is checked, and fails.
    with pytest.raises(approvals.ApprovalRefused) as e:
        approvals.check(OTHER, [good], trusted, 1)
    assert e.value.code == "UNAUTHENTICATED"
    assert counted[0] == 2


def test_a_bad_signature_is_never_cached_as_good(counted: list[int]) -> None:
    a = SigningKey.generate()
    trusted = {a.public.key_id: "A"}
    good = approvals.sign(DIGEST, a)
    bad = approvals.Approval(good.approver_key, bytes(64))
    for _ in range(3):
        with pytest.raises(approvals.ApprovalRefused) as e:
            approvals.check(DIGEST, [bad], trusted, 1)
        assert e.value.code == "UNAUTHENTICATED"
    assert counted[0] == 3  # checked afresh every time
    # A good signature for the same key and digest, cached, does not vouch for a bad one.
    assert approvals.check(DIGEST, [good], trusted, 1) == ["A"]
    with pytest.raises(approvals.ApprovalRefused):
        approvals.check(DIGEST, [bad], trusted, 1)


def test_the_cache_is_bounded(counted: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(approvals, "VERIFIED_CACHE_SIZE", 2)
    a = SigningKey.generate()
    trusted = {a.public.key_id: "A"}
    digests = [f"{i:02x}" * 32 for i in range(3)]
    for d in digests:
        approvals.check(d, [approvals.sign(d, a)], trusted, 1)
    assert counted[0] == 3
    approvals.check(digests[0], [approvals.sign(digests[0], a)], trusted, 1)  # evicted
    assert counted[0] == 4
