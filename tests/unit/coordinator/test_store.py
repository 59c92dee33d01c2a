"""The coordinator's SQLite store: everything survives a reopen, keys are unique, and
every change is in the signed audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tessera import audit, results
from tessera.approvals import Approval
from tessera.clock import FixedClock
from tessera.coordinator.model import Loss, NodeReport, QueryRecord, QueryResult, TemplateRecord
from tessera.coordinator.store import Conflict, Store
from tessera.keys import SigningKey
from tessera.templates.model import Mode

KEY = SigningKey.generate()
CLOCK = FixedClock(datetime(2026, 5, 1, tzinfo=UTC))


def _body(message: str) -> dict[str, object]:
    return {
        "actor": "t",
        "template_digest": None,
        "params": None,
        "mode": None,
        "cost": None,
        "outcome": "OK",
        "message": message,
    }


def _template(digest: str, tid: str = "t", version: int = 1) -> TemplateRecord:
    return TemplateRecord(
        digest,
        tid,
        version,
        "A title",
        b'{"x":1}',
        (),
        "pending",
        2,
        "Ann",
        "2026-05-01T00:00:00.000000Z",
    )


def _result(qid: str) -> QueryResult:
    return QueryResult(
        query_id=qid,
        template_digest="a" * 64,
        template_id="t",
        mode=Mode.PER_NODE,
        released=True,
        withheld_reason="",
        statistic="count_units",
        dimensions=(("age", ("0-4", "5+")),),
        cells=(
            results.Cell(("0-4",), 10.0, 6.0, 14.0, False),
            results.Cell(("5+",), 0.0, 0.0, 5.0, True),
        ),
        nodes=(
            NodeReport("Leeds", "OK", "", True, 2.5),
            NodeReport("York", "UNAVAILABLE", "down", False, 0.4),
        ),
        privacy_spent=Loss("rho", 0.125),
        per_node=(("Leeds", (results.Cell(("0-4",), 10.0, 6.0, 14.0, False),)),),
    )


def _query(qid: str, analyst_key: str, at: str) -> QueryRecord:
    return QueryRecord(qid, "Ann", analyst_key, at, "running", b"{}", b"sig", None)


def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    s = Store(path, KEY, CLOCK, threshold=2)
    s.add_template(_template("a" * 64), _body("submitted"))
    s.add_template(_template("b" * 64, version=2), _body("submitted v2"))
    s.add_approval("a" * 64, Approval("ed25519:k1", b"s1"), "pending", _body("approved"))
    s.add_approval("a" * 64, Approval("ed25519:k2", b"s2"), "published", _body("approved"))
    s.add_approval("a" * 64, Approval("ed25519:k1", b"s1-again"), "published", _body("again"))
    s.begin_query(_query("q-1", "ed25519:ann", "2026-05-01T01"), _body("routed"))
    s.finish_query("q-1", "released", _result("q-1"), _body("released"))
    s.close()

    s = Store(path, KEY, CLOCK, threshold=2)
    t = s.template("a" * 64)
    assert t is not None and t.state == "published" and t.approvals_required == 2
    assert t.approvals == (Approval("ed25519:k1", b"s1-again"), Approval("ed25519:k2", b"s2"))
    assert [x.digest for x in s.templates("published")] == ["a" * 64]
    assert [x.version for x in s.templates()] == [1, 2]
    newest = s.newest_template("t")
    assert newest is not None and newest.version == 2
    assert s.newest_template("nope") is None
    q = s.query("q-1")
    assert q is not None and q.state == "released" and q.result == _result("q-1")
    s.close()
    check = audit.verify(path, KEY.public)
    assert check.ok and check.entries == 7


def test_duplicates_are_conflicts_and_leave_no_audit_entry(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.sqlite", KEY, CLOCK, threshold=1)
    s.add_template(_template("a" * 64), _body("one"))
    with pytest.raises(Conflict):
        s.add_template(_template("a" * 64, version=5), _body("same digest"))
    with pytest.raises(Conflict):
        s.add_template(_template("c" * 64), _body("same id and version"))
    s.begin_query(_query("q-1", "k", "1"))
    with pytest.raises(Conflict):
        s.begin_query(_query("q-1", "k", "2"), _body("again"))
    assert len(s.audit_log.export(1, 100)) == 1
    s.close()


def test_queries_list_newest_first_and_per_analyst(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.sqlite", KEY, CLOCK, threshold=1)
    for qid, key, at in (("q-1", "ann", "1"), ("q-2", "bob", "2"), ("q-3", "ann", "3")):
        s.begin_query(_query(qid, key, at))
    assert [q.query_id for q in s.queries(None, 10)] == ["q-3", "q-2", "q-1"]
    assert [q.query_id for q in s.queries("ann", 10)] == ["q-3", "q-1"]
    assert [q.query_id for q in s.queries("ann", 1)] == ["q-3"]
    assert s.query("q-9") is None
    s.close()
