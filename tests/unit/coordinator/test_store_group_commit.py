"""The coordinator's query writes are group-committed: concurrent starts and results
share transactions, yet each is committed (and audited) when its call returns, and a
duplicate id among them is a Conflict for that one call only."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from tessera import audit
from tessera.clock import FixedClock
from tessera.coordinator.model import QueryRecord
from tessera.coordinator.store import Conflict, Store
from tessera.keys import SigningKey
from tests.unit.coordinator.test_store import _body, _result

KEY = SigningKey.generate()
CLOCK = FixedClock(datetime(2026, 5, 1, tzinfo=UTC))


def _query(qid: str) -> QueryRecord:
    return QueryRecord(qid, "Ann", "k", "2026-05-01T01", "running", b"{}", b"sig", None)


def _state(path: Path, qid: str) -> str | None:
    """Read through a connection of its own: what a restarted process would find."""
    con = sqlite3.connect(path)
    try:
        row = con.execute("SELECT state FROM queries WHERE query_id = ?", (qid,)).fetchone()
        return None if row is None else str(row[0])
    finally:
        con.close()


def test_concurrent_queries_are_each_committed_when_their_call_returns(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    store = Store(path, KEY, CLOCK, threshold=2)
    n = 12
    start = threading.Barrier(n)
    seen: list[object] = [None] * n

    def one(i: int) -> None:
        # Query 0 is asked twice (by threads 0 and 1): one of them must conflict.
        qid = f"q-{max(i - 1, 0)}"
        start.wait()
        try:
            store.begin_query(_query(qid), _body("routed"))
        except Conflict:
            seen[i] = "conflict"
            return
        after_begin = _state(path, qid)
        store.finish_query(qid, "released", _result(qid), _body("released"))
        seen[i] = (after_begin, _state(path, qid))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen.count("conflict") == 1
    assert [s for s in seen if s != "conflict"] == [("running", "released")] * (n - 1)
    store.close()
    result = audit.verify(path, KEY.public)
    assert result.ok and result.entries == 2 * (n - 1)


def _head_seq(path: Path) -> int:
    return int(json.loads(audit.default_head_path(path).read_text())["seq"])


def test_a_query_start_moves_no_head_and_its_result_covers_it(tmp_path: Path) -> None:
    """The start commits without its fsync and leaves the signed head where it was
    (nothing has been released); the result's durable commit moves the head past both
    entries, and the log verifies at every step."""
    path = tmp_path / "c.sqlite"
    store = Store(path, KEY, CLOCK, threshold=2)
    store.finish_query("none", "released", _result("none"), _body("a first durable write"))
    before = _head_seq(path)
    store.begin_query(_query("q-1"), _body("routed"))
    assert _state(path, "q-1") == "running"  # committed, though not fsynced
    assert _head_seq(path) == before
    assert audit.verify(path, KEY.public).ok
    store.finish_query("q-1", "released", _result("q-1"), _body("released"))
    assert _head_seq(path) == before + 2
    store.close()
    result = audit.verify(path, KEY.public)
    assert result.ok and result.entries == before + 2
