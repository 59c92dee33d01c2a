"""The coordinator's durable state: templates, approvals, query history and its audit log.

One SQLite database (WAL, synchronous=FULL). Every change is one transaction, and the
audit entry that records it is written in the same transaction, so a restart loses
nothing and the log never disagrees with the state it describes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tessera.approvals import Approval
from tessera.audit import AuditLog, unsynced
from tessera.clock import Clock
from tessera.coordinator import convert
from tessera.coordinator.model import QueryRecord, QueryResult, TemplateRecord
from tessera.group_commit import GroupCommit, Slot
from tessera.keys import SigningKey

# One grouped write: its statements, given the connection inside the shared transaction.
_Work = Callable[[sqlite3.Connection], Any]
# A grouped write: its statements, its audit entry, whether it must be fsynced.
_Job = tuple[_Work, dict[str, Any], bool]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS templates (
        digest TEXT PRIMARY KEY,
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        title TEXT NOT NULL,
        canonical BLOB NOT NULL,
        state TEXT NOT NULL,
        submitted_by TEXT NOT NULL,
        submitted_at TEXT NOT NULL,
        UNIQUE (id, version)
    )""",
    """CREATE TABLE IF NOT EXISTS approvals (
        digest TEXT NOT NULL REFERENCES templates (digest),
        approver_key TEXT NOT NULL,
        signature BLOB NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (digest, approver_key)
    )""",
    """CREATE TABLE IF NOT EXISTS queries (
        query_id TEXT PRIMARY KEY,
        analyst TEXT NOT NULL,
        analyst_key TEXT NOT NULL,
        submitted_at TEXT NOT NULL,
        state TEXT NOT NULL,
        request_body BLOB NOT NULL,
        request_signature BLOB NOT NULL,
        result BLOB
    )""",
    "CREATE INDEX IF NOT EXISTS queries_by_analyst ON queries (analyst_key, submitted_at)",
    # The release of each combined-only question (digest, parameters, audience): which
    # noisy answer each contributing node gave, and the query that released it.
    """CREATE TABLE IF NOT EXISTS combined_releases (
        question TEXT PRIMARY KEY,
        contributors TEXT NOT NULL,
        query_id TEXT NOT NULL
    )""",
)
_TEMPLATE_COLS = "digest, id, version, title, canonical, state, submitted_by, submitted_at"
_QUERY_COLS = (
    "query_id, analyst, analyst_key, submitted_at, state, request_body, request_signature, result"
)
MAX_LIST = 1000


class Conflict(Exception):
    """A row with that key already exists."""


class Store:
    """Thread-safe: one connection, one lock, shared with the audit log."""

    def __init__(self, path: Path, key: SigningKey, clock: Clock, *, threshold: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.Lock()
        self._group: GroupCommit[_Job, bool] = GroupCommit(self._lock, self._run_batch)
        self._threshold = threshold
        try:
            # Sets WAL and synchronous=FULL on the connection.
            self.audit_log = AuditLog.on_connection(self._conn, self._lock, key, clock)
            with self._tx(None) as conn:
                for stmt in _SCHEMA:
                    conn.execute(stmt)
        except BaseException:
            self._conn.close()
            raise

    @contextmanager
    def _tx(self, audit: dict[str, Any] | None) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                if audit is not None:
                    self.audit_log.append_tx(audit)
                self._conn.commit()
            except sqlite3.IntegrityError:
                self._conn.rollback()
                raise Conflict() from None
            except BaseException:
                self._conn.rollback()
                raise
            if audit is not None:
                self.audit_log.write_head()

    def _grouped(self, work: _Work, audit: dict[str, Any], *, durable: bool = True) -> None:
        """Like `_tx`, for the writes every query makes (its start and its result):
        concurrent ones share one transaction, one fsync and one head write
        (tessera/group_commit.py); each caller returns once its own is committed.
        A batch of writes none of which is `durable` commits without its fsync and
        moves no head: the next durable commit makes it durable and covers it."""
        self._group.submit((work, audit, durable))

    def _run_batch(self, slots: Sequence[Slot[_Job, bool]]) -> None:
        todo = list(slots)
        while todo:
            done: list[Slot[_Job, bool]] = []
            failed: tuple[Slot[_Job, bool], BaseException] | None = None
            durable = any(s.job[2] for s in todo)
            with unsynced(self._conn, when=not durable):
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for slot in todo:
                        work, audit, _ = slot.job
                        self._conn.execute("SAVEPOINT job")
                        try:
                            work(self._conn)
                            self.audit_log.append_tx(audit)
                        except sqlite3.IntegrityError:
                            self._conn.execute("ROLLBACK TO job")
                            slot.finish(error=Conflict())
                        except BaseException as e:
                            failed = (slot, e)
                            break
                        else:
                            done.append(slot)
                        self._conn.execute("RELEASE job")
                    if failed is None:
                        self._conn.commit()
                    else:
                        self._conn.rollback()
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.rollback()
                    raise
            if failed is not None:  # it fails alone; the others run again without it
                failed[0].finish(error=failed[1])
                todo = [s for s in todo if s is not failed[0] and not s.done]
                continue
            if done and durable:
                self.audit_log.write_head()
            for slot in done:
                slot.finish(True)
            return

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def audit(self, body: dict[str, Any]) -> None:
        self.audit_log.append(body)

    # -- combined-only releases (no differencing) -------------------------------------

    def combined_release(self, question: str) -> tuple[dict[str, str], str] | None:
        rows = self._read(
            "SELECT contributors, query_id FROM combined_releases WHERE question = ?",
            (question,),
        )
        if not rows:
            return None
        return {str(k): str(v) for k, v in json.loads(rows[0][0]).items()}, str(rows[0][1])

    def put_combined_release(
        self, question: str, contributors: dict[str, str], query_id: str
    ) -> None:
        with self._tx(None) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO combined_releases VALUES (?, ?, ?)",
                (question, json.dumps(contributors, sort_keys=True), query_id),
            )

    # -- templates -------------------------------------------------------------------

    def add_template(self, t: TemplateRecord, audit: dict[str, Any]) -> None:
        """Raises Conflict if the digest, or the id and version, are already there."""
        with self._tx(audit) as conn:
            conn.execute(
                f"INSERT INTO templates ({_TEMPLATE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    t.digest,
                    t.id,
                    t.version,
                    t.title,
                    t.canonical,
                    t.state,
                    t.submitted_by,
                    t.submitted_at,
                ),
            )

    def add_approval(
        self, digest: str, approval: Approval, state: str, audit: dict[str, Any]
    ) -> None:
        """Add (or replace) one approver's signature and set the template's state."""
        with self._tx(audit) as conn:
            conn.execute(
                "INSERT INTO approvals (digest, approver_key, signature, seq) VALUES (?, ?, ?, "
                "(SELECT COALESCE(MAX(seq), 0) + 1 FROM approvals)) "
                "ON CONFLICT (digest, approver_key) DO UPDATE SET signature = excluded.signature",
                (digest, approval.approver_key, approval.signature),
            )
            conn.execute("UPDATE templates SET state = ? WHERE digest = ?", (state, digest))

    def set_state(self, digest: str, state: str) -> None:
        with self._tx(None) as conn:
            conn.execute("UPDATE templates SET state = ? WHERE digest = ?", (state, digest))

    def template(self, digest: str) -> TemplateRecord | None:
        rows = self._read(f"SELECT {_TEMPLATE_COLS} FROM templates WHERE digest = ?", (digest,))
        return self._template(rows[0]) if rows else None

    def newest_template(self, template_id: str) -> TemplateRecord | None:
        rows = self._read(
            f"SELECT {_TEMPLATE_COLS} FROM templates WHERE id = ? ORDER BY version DESC LIMIT 1",
            (template_id,),
        )
        return self._template(rows[0]) if rows else None

    def templates(self, state: str = "") -> list[TemplateRecord]:
        rows = self._read(
            f"SELECT {_TEMPLATE_COLS} FROM templates WHERE ? = '' OR state = ? "
            "ORDER BY id, version",
            (state, state),
        )
        return [self._template(r) for r in rows]

    def approvals(self, digest: str) -> list[Approval]:
        rows = self._read(
            "SELECT approver_key, signature FROM approvals WHERE digest = ? ORDER BY seq",
            (digest,),
        )
        return [Approval(str(k), bytes(s)) for k, s in rows]

    def _template(self, row: tuple[Any, ...]) -> TemplateRecord:
        digest, tid, version, title, canonical, state, by, at = row
        return TemplateRecord(
            digest=digest,
            id=tid,
            version=int(version),
            title=title,
            canonical=bytes(canonical),
            approvals=tuple(self.approvals(digest)),
            state=state,
            approvals_required=self._threshold,
            submitted_by=by,
            submitted_at=at,
        )

    # -- queries ---------------------------------------------------------------------

    def begin_query(self, q: QueryRecord, audit: dict[str, Any] | None = None) -> None:
        """Record a query as running. Raises Conflict if the id is already there."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO queries ({_QUERY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    q.query_id,
                    q.analyst,
                    q.analyst_key,
                    q.submitted_at,
                    q.state,
                    q.request_body,
                    q.request_signature,
                ),
            )

        if audit is None:
            with self._tx(None) as conn:
                work(conn)
        else:
            # Without its fsync: nothing has been released yet, and the result's
            # durable commit (finish_query) makes this one durable too, in order.
            self._grouped(work, audit, durable=False)

    def finish_query(
        self, query_id: str, state: str, result: QueryResult, audit: dict[str, Any]
    ) -> None:
        encoded = convert.encode_result(result)
        self._grouped(
            lambda conn: conn.execute(
                "UPDATE queries SET state = ?, result = ? WHERE query_id = ?",
                (state, encoded, query_id),
            ),
            audit,
        )

    def query(self, query_id: str) -> QueryRecord | None:
        rows = self._read(f"SELECT {_QUERY_COLS} FROM queries WHERE query_id = ?", (query_id,))
        return _query(rows[0]) if rows else None

    def queries(self, analyst_key: str | None, limit: int) -> list[QueryRecord]:
        """Newest first; only `analyst_key`'s when given."""
        limit = max(1, min(limit, MAX_LIST))
        rows = self._read(
            f"SELECT {_QUERY_COLS} FROM queries WHERE ? IS NULL OR analyst_key = ? "
            "ORDER BY submitted_at DESC, rowid DESC LIMIT ?",
            (analyst_key, analyst_key, limit),
        )
        return [_query(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _query(row: tuple[Any, ...]) -> QueryRecord:
    qid, analyst, key, at, state, body, sig, result = row
    return QueryRecord(
        query_id=qid,
        analyst=analyst,
        analyst_key=key,
        submitted_at=at,
        state=state,
        request_body=bytes(body),
        request_signature=bytes(sig),
        result=None if result is None else convert.decode_result(bytes(result)),
    )
