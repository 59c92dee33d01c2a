"""Group commit in the node's ledger: concurrent commits share a transaction, yet each
caller returns only once its own entry is committed, budgets are checked entry by
entry (never overspent), and one bad job in a batch fails alone."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tessera import audit
from tessera.clock import FixedClock
from tessera.errors import Refusal
from tessera.group_commit import GroupCommit, Slot
from tessera.keys import SigningKey
from tessera.node.config import Policy
from tessera.node.ledger import Committed, Ledger, NewRelease, RequestRecord
from tessera.node.ledger_schema import Job

BODY = {
    "actor": None,
    "template_digest": None,
    "params": None,
    "mode": None,
    "cost": 0.0,
    "outcome": "OK",
    "message": "",
}
POP = "population:children"
CLOCK = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))


def _release(i: int, rho: float) -> NewRelease:
    return NewRelease(f"a{i}", "ssda903", 1, "d" * 64, {"i": i}, "rho", rho, b"{}", POP, rho)


def _req(i: int) -> RequestRecord:
    return RequestRecord(f"request-{i:04d}", f"h{i}", "ed25519:x", f"{i:032x}")


def _in_parallel(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(0..n-1) on n threads released together; each result or exception."""
    out: list[Any] = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = work(i)
        except Exception as e:
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _committed_request(path: Path, request_id: str) -> bool:
    """Read through a connection of its own: what a restarted process would find."""
    con = sqlite3.connect(path)
    try:
        row = con.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,))
        return row.fetchone() is not None
    finally:
        con.close()


def test_concurrent_paid_commits_are_each_durable_on_return(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.sqlite"
    key = SigningKey.generate()
    ledger = Ledger(path, key, CLOCK)
    batches: list[int] = []
    run_batch = ledger._run_batch

    def counting(slots: Any) -> None:
        batches.append(len(slots))
        run_batch(slots)

    # The group commit calls the batch runner it was given; count the batches.
    monkeypatch.setattr(ledger._group, "_run_batch", counting)
    policy = Policy(POP, 100.0, None, None)

    def commit(i: int) -> tuple[Committed, bool]:
        got = ledger.commit(_req(i), f"a{i}", _release(i, 0.5), policy, dict(BODY))
        return got, _committed_request(path, f"request-{i:04d}")

    results = _in_parallel(16, commit)
    assert all(isinstance(r, tuple) for r in results), results
    assert all(found for _, found in results)  # committed before the call returned
    assert sorted(c.audit.seq for c, _ in results) == list(range(1, 17))
    assert sum(batches) == 16
    assert ledger.accountant_spend(policy).lifetime_rho == pytest.approx(8.0)
    ledger.close()
    again = Ledger(path, key, CLOCK)
    assert again.accountant_spend(policy).lifetime_rho == pytest.approx(8.0)
    assert len(again.release_log()) == 16
    again.close()
    assert audit.verify(path, key.public).ok


def test_concurrent_commits_never_overspend(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite", SigningKey.generate(), CLOCK)
    policy = Policy(POP, 1.0, None, None)
    results = _in_parallel(
        16, lambda i: ledger.commit(_req(i), f"a{i}", _release(i, 0.25), policy, dict(BODY))
    )
    paid = [r for r in results if isinstance(r, Committed)]
    refused = [r for r in results if isinstance(r, Refusal)]
    assert len(paid) == 4 and len(refused) == 12, results
    assert all(r.code == "RESOURCE_EXHAUSTED" for r in refused)
    assert ledger.accountant_spend(policy).lifetime_rho == pytest.approx(1.0)
    ledger.close()


def test_concurrent_free_answers_commit_every_request(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    key = SigningKey.generate()
    ledger = Ledger(path, key, CLOCK)
    policy = Policy(POP, 100.0, None, None)
    ledger.commit(_req(0), "a0", _release(0, 0.5), policy, dict(BODY))

    def cached(i: int) -> bool:
        got = ledger.commit(_req(i), "a0", None, policy, dict(BODY))
        return got.from_cache and got.charged == 0 and _committed_request(path, f"request-{i:04d}")

    assert _in_parallel(24, lambda i: cached(i + 1)) == [True] * 24
    assert ledger.accountant_spend(policy).lifetime_rho == pytest.approx(0.5)
    ledger.close()
    assert audit.verify(path, key.public).ok


def test_in_one_batch_a_refused_or_failing_job_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    key = SigningKey.generate()
    ledger = Ledger(path, key, CLOCK)
    policy = Policy(POP, 1.0, None, None)
    ledger.commit(_req(0), "a0", _release(0, 0.5), policy, dict(BODY))
    slots: list[Slot[Job, Committed]] = [
        Slot(Job(_req(1), "a1", _release(1, 0.25), policy, dict(BODY))),
        # A replay of request 0's nonce under another id: refused.
        Slot(
            Job(
                RequestRecord("request-x", "hx", "ed25519:x", f"{0:032x}"),
                "a0",
                None,
                policy,
                dict(BODY),
            )
        ),
        # No stored answer and nothing to release: a fault of ours.
        Slot(Job(_req(3), "missing", None, policy, dict(BODY))),
        # Over the cap once job 1 has paid: refused by the total the batch left.
        Slot(Job(_req(4), "a4", _release(4, 0.5), policy, dict(BODY))),
        Slot(Job(_req(5), "a0", None, policy, dict(BODY))),
    ]
    with ledger._lock:
        ledger._run_batch(slots)
    assert all(s.done for s in slots)
    ok, replay, fault, over, cached = slots
    assert isinstance(ok.result, Committed) and ok.result.charged == 0.25
    assert isinstance(replay.error, Refusal) and replay.error.code == "ALREADY_EXISTS"
    assert isinstance(fault.error, RuntimeError)
    assert isinstance(over.error, Refusal) and over.error.code == "RESOURCE_EXHAUSTED"
    assert isinstance(cached.result, Committed) and cached.result.from_cache
    ledger.close()
    again = Ledger(path, key, CLOCK)
    assert again.accountant_spend(policy).lifetime_rho == pytest.approx(0.75)
    again.close()
    assert [_committed_request(path, f"request-{i:04d}") for i in range(6)] == [
        True,
        True,
        False,
        False,
        False,
        True,
    ]
    assert audit.verify(path, key.public).ok


def test_a_batch_that_raises_fails_its_callers_and_the_next_batch_runs() -> None:
    lock = threading.Lock()
    calls: list[list[int]] = []

    def run(slots: Any) -> None:
        calls.append([s.job for s in slots])
        if any(s.job < 0 for s in slots):
            raise OSError("disk full")
        for s in slots:
            s.finish(s.job * 2)

    group: GroupCommit[int, int] = GroupCommit(lock, run)
    with pytest.raises(OSError):
        group.submit(-1)
    assert group.submit(21) == 42
    assert calls == [[-1], [21]]
