"""The append-only, hash-chained, signed audit log kept by every node and the coordinator.

Format (version 1), one SQLite row per entry:

    audit(seq INTEGER PRIMARY KEY, body BLOB, prev_hash TEXT, hash TEXT, signature BLOB)

- `seq` counts from 1 with no gaps. `body` is `canonical.encode(fields)` where
  `fields` is the caller's dict plus `"seq": seq`, so the position is signed too.
- `prev_hash` is the previous entry's `hash`; the first entry's is 64 zeros (GENESIS).
- `hash = sha256_hex(bytes.fromhex(prev_hash) + body)`: the 32 raw bytes of the
  previous hash followed by the body bytes. The prefix has a fixed length, so the
  concatenation is unambiguous.
- `signature = Ed25519(node key, keys.AUDIT_ENTRY + bytes.fromhex(hash))`.

Editing a body breaks its hash; recomputing the hash breaks its signature; removing
or reordering entries breaks `seq` continuity and the `prev_hash` links. Removing
entries from the *end* leaves a valid chain, so after each commit the log also writes
a signed *head* (`<db>.head`: seq, hash, signature over `keys.AUDIT_HEAD +
canonical({"hash", "seq"})`), atomically. A crash between commit and head write
leaves the head behind the log, which is fine: entries past the head verify by the
chain. A log shorter than its head, or whose entry at the head's seq has another
hash, was truncated.

Durability: WAL journal with `synchronous=FULL`, each append one transaction, so a
`kill -9` or power loss loses at most an entry whose commit had not returned, never
half of one (an entry appended with `durable=False` may be lost to a power loss until
the next fsynced commit; see AuditLog.append).

Neither log holds record-level data: callers put only who/what/mode/cost/outcome in.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera import canonical, keys
from tessera.clock import Clock, isoformat
from tessera.keys import PublicKey, SigningKey

GENESIS = "0" * 64
# Every entry names these; values may be null where they do not apply (a refused
# request may have no valid template digest or cost). `time` is filled from the clock
# when the caller leaves it out.
FIELDS = ("time", "actor", "template_digest", "params", "mode", "cost", "outcome", "message")
# Bodies must stay decodable by canonical.decode's default limit.
MAX_BODY_BYTES = 1 << 20
MAX_EXPORT = 1000
# A wholesale forgery would otherwise list every entry.
MAX_PROBLEMS = 100
# A head file is padded with spaces to this length (it can then be overwritten in place).
HEAD_BYTES = 512

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        body BLOB NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        signature BLOB NOT NULL
    )""",
    # Guards against our own bugs only: anyone with the file can drop these, which is
    # what the chain, the signatures and the head are for.
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
)


class AuditError(RuntimeError):
    """The log cannot be opened or appended to as asked."""


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    hash: str


@dataclass(frozen=True)
class AuditEntry:
    """One stored entry exactly as signed, so a remote party can verify it."""

    seq: int
    body: bytes
    prev_hash: str
    hash: str
    signature: bytes

    def fields(self) -> dict[str, Any]:
        value = canonical.decode(self.body)
        if not isinstance(value, dict):
            raise canonical.CanonicalError("audit body is not an object")
        return value


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    problems: list[str] = field(default_factory=list)


def entry_hash(prev_hash: str, body: bytes) -> str:
    return canonical.sha256_hex(bytes.fromhex(prev_hash) + body)


def head_message(seq: int, hash_: str, time: str) -> bytes:
    """What a head's signature covers: the entry it anchors and when it was written."""
    return canonical.encode({"hash": hash_, "seq": seq, "time": time})


def default_head_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".head")


@contextmanager
def unsynced(conn: sqlite3.Connection, when: bool = True) -> Iterator[None]:
    """Commits inside (when `when`) skip their fsync: synchronous=NORMAL, safe against a
    process crash, not a power failure; the connection is back at FULL afterwards.
    For writes that pay nothing (free answers, steps whose charge is fsynced later)."""
    if not when:
        yield
        return
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous=FULL")


class AuditLog:
    """Appends entries to the `audit` table of a SQLite database.

    Two ways to hold one:

    - **Standalone:** `AuditLog.open(path, key, clock)` owns its connection and lock;
      `append(body)` commits one entry and writes the head.
    - **Sharing the caller's database:** `AuditLog.on_connection(conn, lock, key,
      clock)` uses the caller's connection and `threading.Lock`, so the node can write
      its ledger spend and the audit entry in ONE transaction. Pattern:

          with lock:
              conn.execute("BEGIN IMMEDIATE")
              try:
                  ...ledger writes...
                  log.append_tx(body)
                  conn.commit()
              except BaseException:
                  conn.rollback()
                  raise
              log.write_head()

      `append()` also works on a shared connection (it takes the lock itself), as do
      `export()` and `last()`; do not call those three while holding the lock (it is
      not re-entrant).

    The tail (last seq and hash) is read inside each transaction rather than cached,
    so a caller's rollback can never leave the log chaining from an entry that does
    not exist.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock: threading.Lock,
        key: SigningKey,
        clock: Clock,
        head_path: Path,
        *,
        owns_connection: bool,
    ) -> None:
        self._conn = conn
        self._lock = lock
        self._key = key
        self._clock = clock
        self._head_path = head_path
        self._owns = owns_connection
        # Heads are published under their own lock (always taken last, never while
        # waiting for `lock`), so concurrent committers share one head write.
        self._head_lock = threading.Lock()
        self._head_seq = 0

    @classmethod
    def open(cls, path: Path, key: SigningKey, clock: Clock) -> AuditLog:
        """Open (creating if needed) a log in its own database file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, nothing implicit.
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # Wait for, rather than fail on, another process's write lock (e.g. a reader
        # running a checkpoint).
        conn.execute("PRAGMA busy_timeout=5000")
        try:
            log = cls(
                conn, threading.Lock(), key, clock, default_head_path(path), owns_connection=True
            )
            log._prepare()
        except BaseException:
            conn.close()
            raise
        return log

    @classmethod
    def on_connection(
        cls,
        conn: sqlite3.Connection,
        lock: threading.Lock,
        key: SigningKey,
        clock: Clock,
        *,
        head_path: Path | None = None,
    ) -> AuditLog:
        """Use the caller's connection and lock. The connection must allow use from
        several threads if the caller shares it (check_same_thread=False). Sets WAL and
        synchronous=FULL on it (the log's crash guarantee needs them). The head goes
        beside the database file unless `head_path` says otherwise; an in-memory
        database needs an explicit `head_path`."""
        if head_path is None:
            db_file = _database_file(conn)
            if db_file is None:
                raise AuditError("in-memory database: pass head_path explicitly")
            head_path = default_head_path(db_file)
        log = cls(conn, lock, key, clock, head_path, owns_connection=False)
        with lock:
            log._prepare()
        return log

    def _prepare(self) -> None:
        if self._conn.in_transaction:
            raise AuditError("cannot prepare the audit table inside an open transaction")
        mode = str(self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        if mode != "wal" and _database_file(self._conn):
            # Only an in-memory database (tests) may run without WAL.
            raise AuditError(f"cannot put the audit database in WAL mode (got {mode})")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA:
                self._conn.execute(stmt)
            self._conn.commit()
        except BaseException:
            self._conn.rollback()
            raise
        # Refuse to extend a log signed by someone else: the result would never verify.
        last = self._conn.execute(
            "SELECT seq, hash, signature, body FROM audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if (
            last is not None
            and not _hash_signature_ok(self._key.public, last[1], last[2])
            and not _hands_over_to(self._key.public, last[1], last[2], last[3])
        ):
            raise AuditError(
                f"the last audit entry (seq {last[0]}) is not signed by this log's key"
            )

    # -- writing -------------------------------------------------------------------

    def rotate(self, new_key: PublicKey, actor: str = "operator") -> AuditRecord:
        """Hand the log over to `new_key`: one entry, signed by the current key, that
        names the next one (KEY_ROTATION). Entries after it are signed by the new key,
        and verification follows the handover. Open the log with the new key next."""
        if new_key.key_id == self._key.public.key_id:
            raise AuditError("the new key is the key that signs this log now")
        return self.append(
            {
                "actor": actor,
                "template_digest": None,
                "params": None,
                "mode": None,
                "cost": None,
                "outcome": "key_rotated",
                "message": f"signing key rotated to {new_key.key_id}",
                KEY_ROTATION: {"from": self._key.public.key_id, "to": new_key.key_id},
            }
        )

    def append(self, body: dict[str, Any], *, durable: bool = True) -> AuditRecord:
        """Commit one entry, then write the head. Thread-safe.

        `durable=False` is for an entry that records a step paying nothing: it commits
        with synchronous=NORMAL and a head written but not fsynced, as the ledger's free
        answers do: safe against a process crash, only a power failure could lose it,
        and the next fsynced commit makes it durable.

        If the head write fails (OSError), the entry is already committed: the error
        is raised so the caller knows truncation detection is lagging."""
        with self._lock:
            with unsynced(self._conn, when=not durable):
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    record = self._insert(body)
                    self._conn.commit()
                except BaseException:
                    self._conn.rollback()
                    raise
            if durable:
                self._write_head_locked()
        if not durable:
            self.ensure_head(record.seq)
        return record

    def append_tx(self, body: dict[str, Any]) -> AuditRecord:
        """Add one entry inside the caller's open transaction; the caller holds the lock,
        commits (or rolls back) and then calls `write_head()`."""
        # Best effort: a Lock has no owner, but this catches forgetting it entirely.
        if not self._lock.locked():
            raise AuditError("append_tx needs the caller to hold the log's lock")
        if not self._conn.in_transaction:
            raise AuditError("append_tx needs an open transaction (BEGIN IMMEDIATE first)")
        return self._insert(body)

    def write_head(self) -> None:
        """Write the signed head for the latest committed entry. Call with the lock held,
        after committing a transaction that used `append_tx`."""
        if not self._lock.locked():
            raise AuditError("write_head needs the caller to hold the log's lock")
        if self._conn.in_transaction:
            raise AuditError("write_head must run after the transaction commits")
        self._write_head_locked()

    def ensure_head(self, seq: int) -> None:
        """Return once a signed head covers entry `seq`. Call WITHOUT the lock, after the
        commit. Group commit: callers arriving while a head is being written wait for it,
        then at most one of them writes the next head covering all of them. This head is
        written atomically but not fsynced, matching the entries it covers (committed
        with synchronous=NORMAL: see the module notes)."""
        while self._head_seq < seq:
            with self._lock:
                last = self._conn.execute(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
                ).fetchone()
            if last is None or int(last[0]) < seq:
                raise AuditError(f"entry {seq} is not committed")
            self._publish_head(int(last[0]), str(last[1]), durable=False)

    def _insert(self, body: dict[str, Any]) -> AuditRecord:
        fields_ = self._complete(body)
        last = self._conn.execute(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq, prev = (1, GENESIS) if last is None else (int(last[0]) + 1, str(last[1]))
        fields_["seq"] = seq
        data = canonical.encode(fields_)
        if len(data) > MAX_BODY_BYTES:
            raise AuditError(f"audit body is {len(data)} bytes, over {MAX_BODY_BYTES}")
        digest = entry_hash(prev, data)
        signature = self._key.sign(keys.AUDIT_ENTRY, bytes.fromhex(digest))
        self._conn.execute(
            "INSERT INTO audit (seq, body, prev_hash, hash, signature) VALUES (?, ?, ?, ?, ?)",
            (seq, data, prev, digest, signature),
        )
        return AuditRecord(seq, digest)

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
            raise AuditError("audit body must be a dict with string keys")
        if "seq" in body:
            raise AuditError("audit body must not carry 'seq': the log assigns it")
        out = dict(body)
        out.setdefault("time", isoformat(self._clock.now()))
        missing = [f for f in FIELDS if f not in out]
        if missing:
            raise AuditError(f"audit body lacks fields: {', '.join(missing)}")
        return out

    def _write_head_locked(self) -> None:
        last = self._conn.execute(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if last is None:
            return
        self._publish_head(int(last[0]), str(last[1]), durable=True)

    def _publish_head(self, seq: int, digest: str, *, durable: bool) -> None:
        """Write the head for (seq, digest) unless a later one is already written. Heads
        only move forward, whoever writes them."""
        with self._head_lock:
            if seq <= self._head_seq and not durable:
                return
            if seq < self._head_seq:
                return
            time = isoformat(self._clock.now())
            head = {
                "hash": digest,
                "seq": seq,
                "signature": self._key.sign(keys.AUDIT_HEAD, head_message(seq, digest, time)).hex(),
                "time": time,
            }
            data = canonical.encode(head).ljust(HEAD_BYTES - 1) + b"\n"
            if durable:
                _write_atomic(self._head_path, data)
            else:
                _overwrite(self._head_path, data)
            self._head_seq = seq

    # -- reading -------------------------------------------------------------------

    def export(self, from_seq: int = 1, limit: int = 100) -> list[AuditEntry]:
        """Committed entries with seq >= from_seq, oldest first, at most
        min(limit, MAX_EXPORT). Page on with from_seq = last seq + 1."""
        limit = max(0, min(int(limit), MAX_EXPORT))
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, body, prev_hash, hash, signature FROM audit "
                "WHERE seq >= ? ORDER BY seq LIMIT ?",
                (int(from_seq), limit),
            ).fetchall()
        return [_entry(r) for r in rows]

    def last(self) -> AuditRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return None if row is None else AuditRecord(int(row[0]), str(row[1]))

    @property
    def head_path(self) -> Path:
        return self._head_path

    def close(self) -> None:
        if self._owns:
            with self._lock:
                self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- verification --------------------------------------------------------------------


class _Checker:
    """Walks entries in seq order and records every inconsistency it sees."""

    def __init__(self, public_key: PublicKey) -> None:
        self.public_key = public_key
        self.problems: list[str] = []
        self.count = 0
        self.expected_seq = 1
        self.prev_hash = GENESIS
        self.hashes: dict[int, str] = {}
        self.bodies: dict[int, bytes] = {}
        self.head_time: str | None = None
        # Entries whose signature verified, per key id (a log can change keys).
        self.signed_by: dict[str, int] = {}
        self._more = 0

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self._more += 1

    def feed(self, e: AuditEntry) -> None:
        self.count += 1
        if e.seq != self.expected_seq:
            if e.seq > self.expected_seq:
                gap = (
                    f"entry {self.expected_seq} is missing"
                    if e.seq == self.expected_seq + 1
                    else f"entries {self.expected_seq}-{e.seq - 1} are missing"
                )
                self.problem(f"seq gap before entry {e.seq}: {gap} (removed)")
            else:  # cannot happen with ORDER BY on a primary key, but exported pages may
                self.problem(f"entry {e.seq} is out of order after entry {self.expected_seq - 1}")
        if e.prev_hash != self.prev_hash:
            self.problem(
                f"entry {e.seq}: prev_hash does not match the hash of the entry before it "
                "(an entry was removed, inserted or reordered)"
            )
        try:
            body = e.fields()
        except canonical.CanonicalError as err:
            self.problem(f"entry {e.seq}: body is not a canonical JSON object ({err})")
            body = None
        if body is not None and body.get("seq") != e.seq:
            self.problem(
                f"entry {e.seq}: body says seq {body.get('seq')!r} (entries moved or swapped)"
            )
        if not _is_hex64(e.prev_hash) or entry_hash(e.prev_hash, e.body) != e.hash:
            self.problem(f"entry {e.seq}: body does not match its hash (edited)")
        if not _hash_signature_ok(self.public_key, e.hash, e.signature):
            self.problem(f"entry {e.seq}: signature does not verify (hash or signature forged)")
        elif body is not None:
            key_id = self.public_key.key_id
            self.signed_by[key_id] = self.signed_by.get(key_id, 0) + 1
            handover = _rotation(body)
            if handover is not None and handover[0] == self.public_key.key_id:
                self.public_key = PublicKey.from_id(handover[1])
        self.hashes[e.seq] = e.hash
        self.bodies[e.seq] = e.body
        self.expected_seq = e.seq + 1
        self.prev_hash = e.hash

    def result(self) -> VerifyResult:
        problems = list(self.problems)
        if self._more:
            problems.append(f"... and {self._more} more problems")
        return VerifyResult(ok=not problems, entries=self.count, problems=problems)


def verify_entries(
    entries: Iterable[AuditEntry],
    public_key: PublicKey,
    *,
    first_seq: int = 1,
    prev_hash: str = GENESIS,
) -> VerifyResult:
    """Check a run of entries (e.g. pages from an export) against the chain rules.
    Start mid-log by giving the seq and hash of the entry before the first."""
    checker = _Checker(public_key)
    checker.expected_seq = first_seq
    checker.prev_hash = prev_hash
    for e in entries:
        checker.feed(e)
    return checker.result()


@dataclass(frozen=True)
class Receipt:
    """What the coordinator's log records of one answer a node released: the node's
    audit position and hash and the payload digest from its signed statement."""

    organisation: str
    seq: int
    hash: str
    payload_sha256: str
    time: str


def receipts(
    coordinator_db: Path, coordinator_key: PublicKey, organisation: str
) -> tuple[VerifyResult, list[Receipt]]:
    """Verify the coordinator's log and collect its receipts for one node."""
    result = verify(coordinator_db, coordinator_key)
    out: list[Receipt] = []
    if not coordinator_db.is_file():
        return result, out
    for e in read_entries(coordinator_db):
        try:
            f = e.fields()
        except canonical.CanonicalError:
            continue
        got = f.get("receipts")
        r = got.get(organisation) if isinstance(got, dict) else None
        if not isinstance(r, dict):
            continue
        seq, digest, payload = r.get("seq"), r.get("hash"), r.get("payload_sha256")
        if isinstance(seq, int) and isinstance(digest, str) and isinstance(payload, str):
            out.append(Receipt(organisation, seq, digest, payload, str(f.get("time"))))
    return result, out


def verify(
    db_path: Path,
    public_key: PublicKey,
    head_path: Path | None = None,
    *,
    check_head: bool = True,
    against: Sequence[Receipt] = (),
) -> VerifyResult:
    """Verify a log file read-only. `head_path` defaults to `<db>.head`.

    With `check_head`, a missing head counts as a problem once the log has more
    than one entry (a crash can only leave it missing after the very first commit).
    Without the head, entries removed from the end cannot be detected.

    `against`: the coordinator's receipts for this node (`receipts()`). Each must
    match an entry here, which catches a log (or the ledger database holding it)
    restored from an older copy together with its head, which alone verifies.
    """
    if not db_path.is_file():
        return VerifyResult(False, 0, [f"{db_path}: no such file"])
    first = _first_key(db_path, public_key)
    checker = _Checker(first)
    try:
        with _read_only(db_path) as conn:
            for row in conn.execute(
                "SELECT seq, body, prev_hash, hash, signature FROM audit ORDER BY seq"
            ):
                checker.feed(_entry(row))
    except (sqlite3.Error, TypeError, ValueError) as e:
        checker.problem(f"cannot read the audit table: {type(e).__name__}: {e}")
        return checker.result()
    if first.key_id != public_key.key_id and not checker.signed_by.get(public_key.key_id):
        # Anyone can name a public key in a handover; only its holder can sign after it.
        checker.problem(f"the log is handed over to {public_key.key_id}, which signed no entry")
    if check_head:
        _check_head(checker, head_path if head_path is not None else default_head_path(db_path))
    _check_receipts(checker, against)
    return checker.result()


def _check_receipts(checker: _Checker, against: Sequence[Receipt]) -> None:
    last_seq = checker.expected_seq - 1
    ahead = [r for r in against if r.seq > last_seq]
    if ahead:
        top = max(ahead, key=lambda r: r.seq)
        checker.problem(
            f"log restored from an older copy or truncated: the coordinator holds "
            f"{len(ahead)} receipt(s) past the end of this log (entry {top.seq}, recorded "
            f"{top.time}), but the log ends at entry {last_seq}"
            + (f" and its head was written {checker.head_time}" if checker.head_time else "")
        )
    for r in against:
        if r.seq > last_seq:
            continue
        if checker.hashes.get(r.seq) != r.hash:
            checker.problem(
                f"entry {r.seq} does not have the hash the coordinator's receipt records "
                "(log rewritten)"
            )
            continue
        try:
            body = canonical.decode(checker.bodies[r.seq])
        except (canonical.CanonicalError, KeyError):
            continue
        if isinstance(body, dict) and body.get("payload_sha256") != r.payload_sha256:
            checker.problem(f"entry {r.seq} records another payload than the node's signed answer")


def read_entries(db_path: Path, *, last: int | None = None) -> list[AuditEntry]:
    """Entries from a log file, read-only, oldest first (only the last `last` if given)."""
    with _read_only(db_path) as conn:
        if last is None:
            rows = conn.execute(
                "SELECT seq, body, prev_hash, hash, signature FROM audit ORDER BY seq"
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT seq, body, prev_hash, hash, signature FROM audit ORDER BY seq DESC LIMIT ?",
                (max(0, last),),
            ).fetchall()
            rows.reverse()
    return [_entry(r) for r in rows]


def _check_head(checker: _Checker, head_path: Path) -> None:
    try:
        raw = head_path.read_bytes()
    except FileNotFoundError:
        if checker.count > 1:
            checker.problem(f"head file {head_path} is missing (truncation cannot be ruled out)")
        return
    except OSError as e:
        checker.problem(f"cannot read head file {head_path}: {e.strerror}")
        return
    try:
        head = json.loads(raw)
        seq, digest, sig = head["seq"], head["hash"], bytes.fromhex(head["signature"])
        time = head["time"]
        if (
            not isinstance(seq, int)
            or isinstance(seq, bool)
            or not isinstance(digest, str)
            or not isinstance(time, str)
        ):
            raise TypeError("bad field types")
    except (ValueError, KeyError, TypeError):
        checker.problem(f"head file {head_path} is malformed")
        return
    checker.head_time = time
    if not checker.public_key.verify(keys.AUDIT_HEAD, head_message(seq, digest, time), sig):
        checker.problem("head signature does not verify (head forged or edited)")
        return
    last_seq = checker.expected_seq - 1
    if seq > last_seq:
        checker.problem(
            f"log truncated: the head records entry {seq} but the log ends at entry {last_seq}"
        )
    elif seq >= 1 and checker.hashes.get(seq) != digest:
        checker.problem(f"entry {seq} does not have the hash the head records (log rewritten)")


@contextmanager
def _read_only(db_path: Path) -> Iterator[sqlite3.Connection]:
    uri = "file:" + urllib.parse.quote(str(db_path.resolve())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        yield conn
    finally:
        conn.close()


def _entry(row: Any) -> AuditEntry:
    seq, body, prev_hash, digest, signature = row
    # A tampered file may hold TEXT or NULL where we wrote BLOBs: compare what is there.
    return AuditEntry(
        int(seq), _as_bytes(body), _as_text(prev_hash), _as_text(digest), _as_bytes(signature)
    )


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode("utf-8")


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _database_file(conn: sqlite3.Connection) -> Path | None:
    for row in conn.execute("PRAGMA database_list").fetchall():
        if row[1] == "main":
            return Path(row[2]) if row[2] else None
    return None


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


# The body field of a key handover entry: {"from": old key id, "to": new key id}.
KEY_ROTATION = "key_rotation"


def _rotation(body: Any) -> tuple[str, str] | None:
    r = body.get(KEY_ROTATION) if isinstance(body, dict) else None
    if not isinstance(r, dict):
        return None
    old, new = r.get("from"), r.get("to")
    if not isinstance(old, str) or not isinstance(new, str):
        return None
    try:
        PublicKey.from_id(old)
        PublicKey.from_id(new)
    except keys.KeyError_:
        return None
    return old, new


def _rotation_in(raw: Any) -> tuple[str, str] | None:
    """The handover a stored body records, if any; None for anything unreadable (the
    chain check reports a damaged body; this only looks for handovers)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    if not isinstance(raw, bytes | bytearray | memoryview):
        return None
    try:
        return _rotation(canonical.decode(bytes(raw)))
    except (canonical.CanonicalError, ValueError, TypeError):
        return None


def _hands_over_to(key: PublicKey, digest: str, signature: bytes, body: bytes) -> bool:
    """Whether an entry is a handover to `key`, signed by the key it hands over from."""
    handover = _rotation_in(body)
    if handover is None or handover[1] != key.key_id:
        return False
    return _hash_signature_ok(PublicKey.from_id(handover[0]), digest, signature)


def _first_key(db_path: Path, key: PublicKey) -> PublicKey:
    """The key that signed a log's first entry, found by following its handover entries
    back from `key` (a key the log was later handed over to). The forward pass then
    checks each handover's signature, so a made-up chain does not verify."""
    back: dict[str, str] = {}
    try:
        with _read_only(db_path) as conn:
            for (body,) in conn.execute("SELECT body FROM audit ORDER BY seq"):
                handover = _rotation_in(body)
                if handover is not None:
                    back.setdefault(handover[1], handover[0])
    except sqlite3.Error:
        return key
    current, seen = key.key_id, {key.key_id}
    while current in back and back[current] not in seen:
        current = back[current]
        seen.add(current)
    return PublicKey.from_id(current)


def _hash_signature_ok(public_key: PublicKey, digest: str, signature: bytes) -> bool:
    if not _is_hex64(digest):
        return False
    return public_key.verify(keys.AUDIT_ENTRY, bytes.fromhex(digest), bytes(signature))


def _overwrite(path: Path, data: bytes) -> None:
    """One write() over the start of the file, no rename and no fsync: heads have a fixed
    length, so the file holds exactly the new head once the call returns (a process crash
    cannot tear one write; a power failure can, which `verify` reports as malformed).
    Renaming over an existing file makes ext4 flush it, which costs milliseconds."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        if os.fstat(fd).st_size > len(data):
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # heads are private, like the ledger
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not durable:
        return
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
