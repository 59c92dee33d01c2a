"""The node's durable state: privacy budget ledger, released answers, seen
requests and the audit log, in one SQLite database (WAL, synchronous=FULL).

A spend, the released answer it paid for, the request that asked and the
audit entry are committed in one transaction, fsynced, before the answer
leaves the node. The budget check happens inside that transaction, under the
write lock, so concurrent requests can never overspend. Commits that arrive
together share one transaction and one fsync (group commit), each checked and
paid in turn.

Spend is kept per *accountant* (one per population by default: node/config.py),
in zCDP ρ composed by OpenDP (node/privacy.py), over every dataset, version and
mechanism: a running total for the accountant's lifetime and one per period.
Nothing here ever lowers a total.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tessera import audit
from tessera.audit import AuditLog, AuditRecord
from tessera.canonical import sha256_hex
from tessera.clock import Clock, isoformat
from tessera.errors import Refusal
from tessera.group_commit import GroupCommit, Slot
from tessera.keys import SigningKey
from tessera.node import ledger_schema as schema
from tessera.node import privacy
from tessera.node.config import Policy
from tessera.node.ledger_schema import LIFETIME, SCHEMA, SCHEMA_VERSION, Job
from tessera.node.ledger_schema import AccountantSpend as AccountantSpend
from tessera.node.ledger_schema import Committed as Committed
from tessera.node.ledger_schema import LedgerSchemaError as LedgerSchemaError
from tessera.node.ledger_schema import NewRelease as NewRelease
from tessera.node.ledger_schema import OnPaid as OnPaid
from tessera.node.ledger_schema import ReleaseRow as ReleaseRow
from tessera.node.ledger_schema import RequestRecord as RequestRecord
from tessera.node.ledger_schema import period_of as period_of
from tessera.node.vault import LedgerSealer, private_file

# OpenDP's float maps can exceed the nominal figure by a hair.
_TOLERANCE = 1e-9


class Ledger:
    """Storage interface for the node's budget and released answers."""

    def __init__(
        self,
        path: Path,
        key: SigningKey,
        clock: Clock,
        *,
        accountant_of: Callable[[str], str] | None = None,
        period: str | None = None,
        on_paid: OnPaid | None = None,
        sealer: LedgerSealer | None = None,
    ) -> None:
        """`accountant_of` maps a dataset to its accountant (needed to migrate a ledger
        written before accountants); `period` is the policy's period kind, and the
        period totals are rebuilt from the releases when it changes; `on_paid` is
        called after each paid commit (the rollback watermark). `sealer` encrypts the
        stored answers and parameters (default: the key TESSERA_DATA_KEY_FILE names)."""
        self._sealer = sealer if sealer is not None else LedgerSealer.from_environment()
        private_file(path)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._group: GroupCommit[Job, Committed] = GroupCommit(self._lock, self._run_batch)
        self._clock = clock
        self._on_paid = on_paid
        self.audit_log = AuditLog.on_connection(self._conn, self._lock, key, clock)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                migrate = schema.needs_migration(self._conn)
                if migrate and accountant_of is None:
                    raise LedgerSchemaError(
                        f"{path}: this ledger predates per-population accountants; start "
                        "the node with its config to migrate it (every past spend is kept)"
                    )
                for stmt in SCHEMA[:1]:
                    self._conn.execute(stmt)
                if migrate:
                    assert accountant_of is not None
                    schema.migrate(self._conn, accountant_of)
                for stmt in SCHEMA[1:]:
                    self._conn.execute(stmt)
                stored = schema.meta(self._conn, "period")
                if migrate or stored != (period or ""):
                    schema.rebuild_totals(self._conn, period)
                self._conn.execute(
                    "INSERT OR REPLACE INTO ledger_meta VALUES ('schema', ?), ('period', ?)",
                    (SCHEMA_VERSION, period or ""),
                )
                self._conn.commit()
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.rollback()
                self._conn.close()
                raise

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

    def accountant_spend(self, policy: Policy) -> AccountantSpend:
        """What an accountant has spent, for its lifetime and in the current period."""
        label = period_of(policy.period, self._clock.now())
        with self._lock:
            life = self._acc_locked(policy.name, LIFETIME)
            per = self._acc_locked(policy.name, label) if label is not None else 0.0
        return AccountantSpend(policy.name, life, label, per)

    def lifetime_totals(self) -> dict[str, float]:
        with self._lock:
            return self._lifetime_locked()

    def _lifetime_locked(self) -> dict[str, float]:
        return {
            str(a): float(r)
            for a, r in self._conn.execute(
                "SELECT accountant, rho FROM accountant_spent WHERE period = ?", (LIFETIME,)
            )
        }

    def _acc_locked(self, accountant: str, period: str) -> float:
        row = self._conn.execute(
            "SELECT rho FROM accountant_spent WHERE accountant = ? AND period = ?",
            (accountant, period),
        ).fetchone()
        return 0.0 if row is None else float(row[0])

    def release_log(self) -> list[ReleaseRow]:
        """Every release paid for, oldest first (for operators and audits; no payloads:
        `stored_answer` opens one)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT answer_key, dataset, version, template_digest, kind, cost, accountant, "
                "rho, created FROM releases ORDER BY created, rowid"
            ).fetchall()
        return [
            ReleaseRow(str(a), str(d), int(v), str(t), str(k), float(c), str(acc), float(r), str(w))
            for a, d, v, t, k, c, acc, r, w in rows
        ]

    def stored_answer(self, answer_key: str) -> bytes | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT payload FROM releases WHERE answer_key = ?", (answer_key,)
            ).fetchone()
        return None if row is None else self._sealer.open_payload(answer_key, row[0])

    def seen(self, req: RequestRecord, answer_key: str) -> bool:
        """Refuse a replay early (an identical retry passes: the commit answers it), and
        say whether the answer is already stored, without opening it (the commit does)."""
        with self._lock:
            self._check_replay(req)
            return (
                self._conn.execute(
                    "SELECT 1 FROM releases WHERE answer_key = ?", (answer_key,)
                ).fetchone()
                is not None
            )

    def join_secagg_session(self, session_id: str) -> bool:
        """Record, durably, that this node joined a secure-aggregation session; False if
        it ever joined that id before (even before a restart): a session is joined once,
        so no noisy vector is ever masked twice.

        Committed with synchronous=NORMAL (safe against a process crash): nothing of
        the session's data leaves before its share's commit, which is fsynced and so
        makes this row durable too; and that commit is keyed by the session id, so
        even a row lost to a power failure could not let a second share out."""
        with self._lock:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS secagg_sessions "
                "(session_id TEXT PRIMARY KEY, joined TEXT NOT NULL)"
            )
            with audit.unsynced(self._conn):
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.execute(
                        "INSERT INTO secagg_sessions VALUES (?, ?)",
                        (session_id, isoformat(self._clock.now())),
                    )
                    self._conn.commit()
                except sqlite3.IntegrityError:
                    self._conn.rollback()
                    return False
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.rollback()
                    raise
        return True

    # -- the one write path for answers --------------------------------------------

    def commit(
        self,
        req: RequestRecord,
        answer_key: str,
        release: NewRelease | None,
        policy: Policy | None,
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
        the signed audit head past them.

        Concurrent callers share one transaction and one fsync (`_run_batch`); each
        returns only after the commit covering its own entry."""
        result = self._group.submit(Job(req, answer_key, release, policy, audit_body))
        if release is None:
            # A free answer leaves only once a signed head covers its entry too; waiting
            # committers share one head write.
            self.audit_log.ensure_head(result.audit.seq)
        return result

    def _run_batch(self, slots: Sequence[Slot[Job, Committed]]) -> None:
        """Group commit (tessera/group_commit.py), under the lock: every job queued together
        in ONE transaction, each in a savepoint, its budget checked against the totals
        the jobs before it left, so concurrent answers never overspend. A job refused
        (a replay, a spent budget) rolls back alone; a job that fails otherwise is taken
        out and the rest run again. One commit then makes them all durable: fsynced
        if any job pays (synchronous=FULL), else NORMAL, as for a single free answer."""
        todo = list(slots)
        while todo:
            free = all(s.job.release is None for s in todo)
            done: list[tuple[Slot[Job, Committed], Committed | Refusal]] = []
            failed: tuple[Slot[Job, Committed], BaseException] | None = None
            with audit.unsynced(self._conn, when=free):
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for slot in todo:
                        j = slot.job
                        self._conn.execute("SAVEPOINT job")
                        try:
                            got = self._commit_locked(
                                j.req, j.answer_key, j.release, j.policy, j.audit_body
                            )
                        except Refusal as r:
                            self._conn.execute("ROLLBACK TO job")
                            done.append((slot, r))
                        except BaseException as e:
                            failed = (slot, e)
                            break
                        else:
                            done.append((slot, got))
                        self._conn.execute("RELEASE job")
                    if failed is None:
                        self._conn.commit()
                    elif self._conn.in_transaction:
                        self._conn.rollback()
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.rollback()
                    raise
            if failed is not None:
                failed[0].finish(error=failed[1])
                todo = [s for s in todo if s is not failed[0]]
                continue
            self._after_commit(done, free)
            return

    def _after_commit(
        self, done: list[tuple[Slot[Job, Committed], Committed | Refusal]], free: bool
    ) -> None:
        """Publish a committed batch: one durable head and one watermark for all its
        paid answers, then release every caller."""
        error: OSError | None = None
        if not free:
            try:
                self.audit_log.write_head()
                paid = [c for _, c in done if isinstance(c, Committed) and c.charged > 0]
                if paid and self._on_paid is not None:
                    # After the fsynced commit: the watermark never runs ahead of the ledger.
                    last = max(paid, key=lambda c: c.audit.seq)
                    self._on_paid(last.audit.seq, last.audit.hash, self._lifetime_locked())
            except OSError as e:
                # Committed, but the head or watermark lags: tell those who asked to pay.
                error = e
        for slot, outcome in done:
            if isinstance(outcome, Refusal):
                slot.finish(error=outcome)
            elif error is not None and slot.job.release is not None:
                slot.finish(error=error)
            else:
                slot.finish(outcome)

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
        policy: Policy | None,
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
                    "payload_sha256": sha256_hex(payload),
                }
            )
            return Committed(payload, 0.0, True, record)
        existing = self._conn.execute(
            "SELECT payload FROM releases WHERE answer_key = ?", (answer_key,)
        ).fetchone()
        charged = 0.0
        if existing is not None:
            payload = self._sealer.open_payload(answer_key, existing[0])
        else:
            if release is None:
                raise RuntimeError("no stored answer and nothing to release")
            if policy is None or policy.name != release.accountant:
                raise RuntimeError("a release must be paid by its own accountant's policy")
            self._pay_locked(policy, release.rho)
            self._conn.execute(
                "INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    answer_key,
                    release.dataset,
                    release.version,
                    release.template_digest,
                    self._sealer.seal_params(answer_key, release.params),
                    release.kind,
                    release.cost,
                    self._sealer.seal_payload(answer_key, release.payload),
                    isoformat(self._clock.now()),
                    release.accountant,
                    release.rho,
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
            {
                **audit_body,
                "cost": charged,
                "cached": existing is not None,
                # What was released, so a signed answer statement can be traced here.
                "payload_sha256": sha256_hex(payload),
            }
        )
        return Committed(payload, charged, existing is not None, record)

    def _pay_locked(self, policy: Policy, rho: float) -> None:
        """Check and record a spend of `rho` against every limit of `policy`, inside the
        caller's transaction. The new totals are OpenDP's composition of the old with it."""
        if rho <= 0:
            raise RuntimeError("a release must cost something")
        label = period_of(policy.period, self._clock.now())
        checks = [(LIFETIME, policy.lifetime_rho)]
        if label is not None:
            checks.append((label, policy.period_rho))
        updates = []
        for period, limit in checks:
            spent = self._acc_locked(policy.name, period)
            total = privacy.compose_rho([spent, rho])
            if limit is not None and total > limit * (1 + _TOLERANCE):
                which = "lifetime" if period == LIFETIME else f"{period} allowance"
                raise Refusal(
                    "RESOURCE_EXHAUSTED",
                    f"the {which} of accountant {policy.name} (rho {limit:g}, {spent:.6g} "
                    f"spent) cannot pay rho {rho:.6g}",
                )
            updates.append((policy.name, period, total))
        self._conn.executemany(
            "INSERT INTO accountant_spent VALUES (?, ?, ?) "
            "ON CONFLICT (accountant, period) DO UPDATE SET rho = excluded.rho",
            updates,
        )

    def _payload(self, answer_key: str) -> bytes:
        row = self._conn.execute(
            "SELECT payload FROM releases WHERE answer_key = ?", (answer_key,)
        ).fetchone()
        if row is None:
            raise RuntimeError("a recorded request points at a missing answer")
        return self._sealer.open_payload(answer_key, row[0])

    def audit(self, body: dict[str, Any], *, durable: bool = True) -> AuditRecord:
        """Append an entry on its own (refusals; `durable=False`: see AuditLog.append)."""
        return self.audit_log.append(body, durable=durable)
