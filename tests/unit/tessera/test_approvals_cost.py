"""Cheap requests stay cheap: approvals are de-duplicated and capped before any
signature is verified, so 28,000 copies of one valid approval cost what one does."""

from __future__ import annotations

import time

import pytest

from tessera import approvals, keys
from tessera.keys import SigningKey

DIGEST = "ab" * 32


@pytest.fixture
def signers() -> list[SigningKey]:
    return [SigningKey.generate() for _ in range(3)]


def _trusted(signers: list[SigningKey]) -> dict[str, str]:
    return {k.public.key_id: f"Approver {i}" for i, k in enumerate(signers)}


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = keys.PublicKey.verify

    def counted(self: keys.PublicKey, domain: bytes, message: bytes, sig: bytes) -> bool:
        calls[0] += 1
        return real(self, domain, message, sig)

    monkeypatch.setattr(keys.PublicKey, "verify", counted)
    # Verified approvals are cached (tessera.approvals): count first sights only.
    approvals.forget_verified()
    return calls


def test_28000_duplicate_approvals_cost_no_more_than_one(
    signers: list[SigningKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    trusted = _trusted(signers)
    one = [approvals.sign(DIGEST, signers[0]), approvals.sign(DIGEST, signers[1])]
    flood = one[:1] * 28_000 + one[1:]
    calls = _counting(monkeypatch)
    assert approvals.check(DIGEST, one, trusted, 2) == ["Approver 0", "Approver 1"]
    single = calls[0]
    calls[0] = 0
    approvals.forget_verified()
    start = time.perf_counter()
    assert approvals.check(DIGEST, flood, trusted, 2) == ["Approver 0", "Approver 1"]
    elapsed = time.perf_counter() - start
    assert calls[0] == single == 2
    # Only a set lookup per copy: far below one signature check per copy (2.4 s before).
    assert elapsed < 0.25, elapsed


def test_verifications_are_capped_at_the_trust_list(
    signers: list[SigningKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many distinct keys: trusted ones are checked once each, unknown ones never."""
    trusted = _trusted(signers)
    strangers = [SigningKey.generate() for _ in range(50)]
    sent = [approvals.sign(DIGEST, k) for k in strangers + signers + signers]
    calls = _counting(monkeypatch)
    assert len(approvals.check(DIGEST, sent, trusted, 3)) == 3
    assert calls[0] == len(trusted)
    with pytest.raises(approvals.ApprovalRefused) as e:
        approvals.check(DIGEST, [approvals.sign(DIGEST, k) for k in strangers], trusted, 1)
    assert (
        e.value.code == "PERMISSION_DENIED"
        and "50 signature(s) are by approvers this node does not trust" in e.value.message
    )
    assert calls[0] == len(trusted)  # no signature by an unknown key is ever verified


def test_a_bad_copy_is_still_refused(signers: list[SigningKey]) -> None:
    trusted = _trusted(signers)
    good = approvals.sign(DIGEST, signers[0])
    bad = approvals.Approval(good.approver_key, bytes(64))
    with pytest.raises(approvals.ApprovalRefused) as e:
        approvals.check(DIGEST, [bad, good] * 10, trusted, 1)
    assert e.value.code == "UNAUTHENTICATED"
