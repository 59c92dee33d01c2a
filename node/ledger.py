"""The node's durable state: privacy budget ledger, released answers, seen
requests and the audit log, in one SQLite database (WAL, synchronous=FULL).

A spend, the released answer it paid for, the request that asked and the
audit entry are committed in one transaction, fsynced, before the answer
leaves the node. The budget check happens inside that transaction, under the
write lock, so concurrent requests can never overspend.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessera.audit import AuditLog, AuditRecord
from tessera.clock import Clock, isoformat
from tessera.errors import Refusal
from tessera.keys import SigningKey

# OpenDP's float maps can exceed the nominal figure by a hair.
_TOLERANCE = 1e-9

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS releases (
        answer_key TEXT PRIMARY KEY,
        dataset TEXT NOT NULL,
        version INTEGER NOT NULL,
        template_digest TEXT NOT NULL,
        params TEXT NOT NULL,
        kind TEXT NOT NULL,
        cost REAL NOT NULL,
        payload BLOB NOT NULL,
        created TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS releases_by_version ON releases (dataset, version, kind)",
    # Running totals, updated in the same transaction as each release, so that reading
    # what a version has spent costs the same however many answers it has released.
    """CREATE TABLE IF NOT EXISTS spent (
        dataset TEXT NOT NULL,
        version INTEGER NOT NULL,
        kind TEXT NOT NULL,
        total REAL NOT NULL,
        PRIMARY KEY (dataset, version, kind))""",
    """INSERT OR IGNORE INTO spent (dataset, version, kind, total)
        SELECT dataset, version, kind, sum(cost) FROM releases GROUP BY dataset, version, kind""",
    """CREATE TABLE IF NOT EXISTS requests (
        request_id TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        analyst TEXT NOT NULL,
        nonce TEXT NOT NULL,
        answer_key TEXT NOT NULL,
        charged REAL NOT NULL,
        created TEXT NOT NULL,
        UNIQUE (analyst, nonce))""",
)


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    request_hash: str
    analyst: str
    nonce: str


@dataclass(frozen=True)
class NewRelease:
    answer_key: str
    dataset: str
    version: int
    template_digest: str
    params: dict[str, Any]
    kind: str
    cost: float
    payload: bytes


@dataclass(frozen=True)
class Committed:
    payload: bytes
    charged: float
    from_cache: bool
    audit: AuditRecord


class Ledger:
    """Storage interface for the node's budget and released answers."""

    def __init__(self, path: Path, key: SigningKey, clock: Clock) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._clock = clock
        self.audit_log = AuditLog.on_connection(self._conn, self._lock, key, clock)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA:
                self._conn.execute(stmt)
            self._conn.commit()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- reads (no transaction needed; WAL gives a consistent snapshot) ------------

    def spent(self, dataset: str, version: int, kind: str) -> float:
        with self._lock:
            return self._spent_locked(dataset, version, kind)

    def _spent_locked(self, dataset: str, version: int, kind: str) -> float:
        row = self._conn.execute(
            "SELECT total FROM spent WHERE dataset = ? AND version = ? AND kind = ?",
            (dataset, version, kind),
        ).fetchone()
        return 0.0 if row is None else float(row[0])

    def stored_answer(self, answer_key: str) -> bytes | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT payload FROM releases WHERE answer_key = ?", (answer_key,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def seen(self, req: RequestRecord) -> str | None:
        """Refuse a replay early; return the answer key of an identical retry."""
        with self._lock:
            return self._check_replay(req)

    # -- the one write path for answers --------------------------------------------

    def commit(
        self,
        req: RequestRecord,
        answer_key: str,
        release: NewRelease | None,
        budget_total: float | None,
        audit_body: dict[str, Any],
    ) -> Committed:
        """Atomically record the request, pay for a new release if there is one,
        and append the audit entry. Returns the payload to send.

        With `release=None` the answer must already be stored (a cached answer).
        If an identical answer was released meanwhile, that one is returned and
        `release` is discarded unpaid: it never left the node.

        A spend is fsynced (synchronous=FULL) before this returns. An answer that
        was already paid for costs nothing, so its request record and audit entry
        commit with synchronous=NORMAL: safe against a process crash, and only a power
        failure could lose them. The next fsynced commit makes them durable and moves
        the signed audit head past them."""
        free = release is None
        with self._lock:
            if free:
                self._conn.execute("PRAGMA synchronous=NORMAL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = self._commit_locked(req, answer_key, release, budget_total, audit_body)
                    self._conn.commit()
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.rollback()
                    raise
            finally:
                if free:
                    self._conn.execute("PRAGMA synchronous=FULL")
            if not free:
                self.audit_log.write_head()
        return result

    def _check_replay(self, req: RequestRecord) -> str | None:
        row = self._conn.execute(
            "SELECT request_hash, answer_key FROM requests WHERE request_id = ?",
            (req.request_id,),
        ).fetchone()
        if row is not None:
            if row[0] == req.request_hash:
                return str(row[1])
            raise Refusal("ALREADY_EXISTS", "this request id was already used for another request")
        if self._conn.execute(
            "SELECT 1 FROM requests WHERE analyst = ? AND nonce = ?", (req.analyst, req.nonce)
        ).fetchone():
            raise Refusal("ALREADY_EXISTS", "this nonce was already used: the request is a replay")
        return None

    def _commit_locked(
        self,
        req: RequestRecord,
        answer_key: str,
        release: NewRelease | None,
        budget_total: float | None,
        audit_body: dict[str, Any],
    ) -> Committed:
        retry_key = self._check_replay(req)
        if retry_key is not None:
            payload = self._payload(retry_key)
            record = self.audit_log.append_tx(
                {
                    **audit_body,
                    "cost": 0.0,
                    "cached": True,
                    "message": "retry of an answered request",
                }
            )
            return Committed(payload, 0.0, True, record)
        existing = self._conn.execute(
            "SELECT payload FROM releases WHERE answer_key = ?", (answer_key,)
        ).fetchone()
        charged = 0.0
        if existing is not None:
            payload = bytes(existing[0])
        else:
            if release is None:
                raise RuntimeError("no stored answer and nothing to release")
            spent = self._spent_locked(release.dataset, release.version, release.kind)
            if budget_total is None or spent + release.cost > budget_total * (1 + _TOLERANCE):
                raise Refusal(
                    "RESOURCE_EXHAUSTED",
                    f"the {release.kind} budget for {release.dataset} version "
                    f"{release.version} cannot pay {release.cost:g}",
                )
            self._conn.execute(
                "INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    answer_key,
                    release.dataset,
                    release.version,
                    release.template_digest,
                    json.dumps(release.params, sort_keys=True),
                    release.kind,
                    release.cost,
                    release.payload,
                    isoformat(self._clock.now()),
                ),
            )
            self._conn.execute(
                "INSERT INTO spent (dataset, version, kind, total) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (dataset, version, kind) DO UPDATE SET total = total + excluded.total",
                (release.dataset, release.version, release.kind, release.cost),
            )
            payload, charged = release.payload, release.cost
        self._conn.execute(
            "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                req.request_id,
                req.request_hash,
                req.analyst,
                req.nonce,
                answer_key,
                charged,
                isoformat(self._clock.now()),
            ),
        )
        record = self.audit_log.append_tx(
            {**audit_body, "cost": charged, "cached": existing is not None}
        )
        return Committed(payload, charged, existing is not None, record)

    def _payload(self, answer_key: str) -> bytes:
        row = self._conn.execute(
            "SELECT payload FROM releases WHERE answer_key = ?", (answer_key,)
        ).fetchone()
        if row is None:
            raise RuntimeError("a recorded request points at a missing answer")
        return bytes(row[0])

    def audit(self, body: dict[str, Any]) -> AuditRecord:
        """Append an entry on its own (refusals)."""
        return self.audit_log.append(body)
