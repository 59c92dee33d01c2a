from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera import audit, canonical, keys
from tessera.audit import GENESIS, AuditError, AuditLog, verify
from tessera.cli import audit_cmd
from tessera.clock import FixedClock
from tessera.keys import SigningKey

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def body(i: int, **over: object) -> dict[str, object]:
    b: dict[str, object] = {
        "actor": f"analyst-{i % 3}",
        "template_digest": f"{i:064x}",
        "params": {"year": 2020 + i % 5},
        "mode": "combined",
        "cost": {"rho": 0.01},
        "outcome": "OK" if i % 4 else "PERMISSION_DENIED",
        "message": f"request {i}",
    }
    b.update(over)
    return b


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


def make_log(path: Path, key: SigningKey, n: int, clock: FixedClock | None = None) -> None:
    clock = clock or FixedClock(T0)
    with AuditLog.open(path, key, clock) as log:
        for i in range(n):
            log.append(body(i))
            clock.advance(timedelta(seconds=1))


def tamper(db: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """What an attacker with the file can do: drop the guard triggers and edit."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        for sql, params in statements:
            conn.execute(sql, params)
        conn.execute("COMMIT")
    finally:
        conn.close()


def row(db: Path, seq: int) -> tuple[bytes, str, str, bytes]:
    conn = sqlite3.connect(db)
    try:
        r = conn.execute(
            "SELECT body, prev_hash, hash, signature FROM audit WHERE seq = ?", (seq,)
        ).fetchone()
    finally:
        conn.close()
    return bytes(r[0]), r[1], r[2], bytes(r[3])


def cli_main(argv: list[str], environ: dict[str, str]) -> int:
    # Only this group's parser: other CLI groups are not under test here.
    parser = argparse.ArgumentParser(prog="tessera")
    audit_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args, environ)
    return code


def problems_text(result: audit.VerifyResult) -> str:
    return "\n".join(result.problems)


# -- appending and the format ---------------------------------------------------------


def test_append_many_then_verify(tmp_path: Path, key: SigningKey, clock: FixedClock) -> None:
    db = tmp_path / "audit.db"
    with AuditLog.open(db, key, clock) as log:
        records = [log.append(body(i)) for i in range(60)]
        assert [r.seq for r in records] == list(range(1, 61))
        assert log.last() == records[-1]
    result = verify(db, key.public)
    assert result == audit.VerifyResult(ok=True, entries=60, problems=[])


def test_entry_format_is_as_documented(tmp_path: Path, key: SigningKey, clock: FixedClock) -> None:
    db = tmp_path / "audit.db"
    with AuditLog.open(db, key, clock) as log:
        r1 = log.append(body(1))
        r2 = log.append(body(2, time="2025-01-01T00:00:00.000000Z"))
    b1, prev1, h1, sig1 = row(db, 1)
    assert prev1 == GENESIS
    fields = canonical.decode(b1)
    assert fields == {**body(1), "seq": 1, "time": "2026-03-01T09:00:00.000000Z"}
    assert h1 == r1.hash == canonical.sha256_hex(bytes(32) + b1)
    assert key.public.verify(keys.AUDIT_ENTRY, bytes.fromhex(h1), sig1)
    # Domain separation: the same signature is no good as a head signature.
    assert not key.public.verify(keys.AUDIT_HEAD, bytes.fromhex(h1), sig1)
    b2, prev2, h2, _ = row(db, 2)
    assert prev2 == h1
    assert h2 == r2.hash == canonical.sha256_hex(bytes.fromhex(h1) + b2)
    assert canonical.decode(b2)["time"] == "2025-01-01T00:00:00.000000Z"  # caller's time kept

    head = json.loads((tmp_path / "audit.db.head").read_bytes())
    assert head["seq"] == 2 and head["hash"] == h2
    assert head["time"] == "2026-03-01T09:00:00.000000Z"
    msg = canonical.encode({"hash": h2, "seq": 2, "time": head["time"]})
    assert key.public.verify(keys.AUDIT_HEAD, msg, bytes.fromhex(head["signature"]))


def test_sqlite_settings(tmp_path: Path, key: SigningKey, clock: FixedClock) -> None:
    db = tmp_path / "audit.db"
    with AuditLog.open(db, key, clock) as log:
        log.append(body(0))
        conn = log._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        cols = [(r[1], r[2], r[3], r[5]) for r in conn.execute("PRAGMA table_info(audit)")]
    assert cols == [
        ("seq", "INTEGER", 0, 1),
        ("body", "BLOB", 1, 0),
        ("prev_hash", "TEXT", 1, 0),
        ("hash", "TEXT", 1, 0),
        ("signature", "BLOB", 1, 0),
    ]


def test_non_durable_append_is_chained_and_headed(
    tmp_path: Path, key: SigningKey, clock: FixedClock
) -> None:
    # durable=False (a step that pays nothing): committed and covered by the signed head
    # at once, and the connection is back at synchronous=FULL for the next entry.
    db = tmp_path / "audit.db"
    with AuditLog.open(db, key, clock) as log:
        log.append(body(0))
        r = log.append(body(1), durable=False)
        assert log._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
        head = json.loads((tmp_path / "audit.db.head").read_bytes())
        assert (head["seq"], head["hash"]) == (2, r.hash)
        log.append(body(2))
    assert verify(db, key.public) == audit.VerifyResult(ok=True, entries=3, problems=[])


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({**body(0), "seq": 5}, "must not carry 'seq'"),
        ({k: v for k, v in body(0).items() if k != "outcome"}, "lacks fields: outcome"),
        ({**body(0), "message": "x" * (1 << 20)}, "over"),
        ({1: "x"}, "string keys"),
    ],
)
def test_bad_bodies_are_refused_and_leave_no_trace(
    tmp_path: Path, key: SigningKey, clock: FixedClock, bad: dict[object, object], match: str
) -> None:
    db = tmp_path / "audit.db"
    with AuditLog.open(db, key, clock) as log:
        log.append(body(0))
        with pytest.raises(AuditError, match=match):
            log.append(bad)  # type: ignore[arg-type]
        with pytest.raises(canonical.CanonicalError):
            log.append(body(1, params={"x": float("nan")}))
        assert log.append(body(2)).seq == 2
    assert verify(db, key.public).ok


def test_guard_triggers_refuse_update_and_delete(
    tmp_path: Path, key: SigningKey, clock: FixedClock
) -> None:
    db = tmp_path / "audit.db"
    make_log(db, key, 3)
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET body = x'00' WHERE seq = 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit WHERE seq = 1")
    finally:
        conn.close()


def test_reopen_continues_the_chain(tmp_path: Path, key: SigningKey) -> None:
    db = tmp_path / "audit.db"
    make_log(db, key, 5)
    make_log(db, key, 5)
    assert verify(db, key.public) == audit.VerifyResult(True, 10, [])


def test_reopen_with_another_key_is_refused(tmp_path: Path, key: SigningKey) -> None:
    db = tmp_path / "audit.db"
    make_log(db, key, 2)
    with pytest.raises(AuditError, match="not signed by this log's key"):
        AuditLog.open(db, SigningKey.generate(), FixedClock(T0))


def test_export_pages_verify_remotely(tmp_path: Path, key: SigningKey, clock: FixedClock) -> None:
    db = tmp_path / "audit.db"
    with AuditLog.open(db, key, clock) as log:
        for i in range(25):
            log.append(body(i))
        pages = [log.export(1, 10), log.export(11, 10), log.export(21, 10)]
        assert [len(p) for p in pages] == [10, 10, 5]
        assert log.export(26, 10) == []
        assert len(log.export(1, 10**6)) == 25  # capped at MAX_EXPORT, which is larger
    assert pages[0][0].fields()["seq"] == 1
    # A consumer checks each page, chaining from the last entry of the page before.
    ok1 = audit.verify_entries(pages[0], key.public)
    ok2 = audit.verify_entries(pages[1], key.public, first_seq=11, prev_hash=pages[0][-1].hash)
    assert ok1.ok and ok2.ok
    bad = audit.verify_entries(pages[2], key.public)  # claims to start at 1
    assert not bad.ok and "entries 1-20 are missing" in problems_text(bad)


# -- tampering ------------------------------------------------------------------------

N = 12


@pytest.fixture
def log12(tmp_path: Path, key: SigningKey) -> Path:
    db = tmp_path / "audit.db"
    make_log(db, key, N)
    assert verify(db, key.public).ok
    return db


def test_edited_body_is_detected(log12: Path, key: SigningKey) -> None:
    b, *_ = row(log12, 5)
    edited = canonical.encode({**canonical.decode(b), "outcome": "OK", "cost": None})
    tamper(log12, ("UPDATE audit SET body = ? WHERE seq = 5", (edited,)))
    result = verify(log12, key.public)
    assert not result.ok
    assert result.problems == ["entry 5: body does not match its hash (edited)"]


def test_edited_body_with_recomputed_hash_is_detected(log12: Path, key: SigningKey) -> None:
    b, prev, _, _ = row(log12, 5)
    edited = canonical.encode({**canonical.decode(b), "actor": "someone-else"})
    new_hash = audit.entry_hash(prev, edited)
    tamper(log12, ("UPDATE audit SET body = ?, hash = ? WHERE seq = 5", (edited, new_hash)))
    text = problems_text(verify(log12, key.public))
    assert "entry 5: signature does not verify" in text
    assert "entry 6: prev_hash does not match" in text


def test_changed_signature_is_detected(log12: Path, key: SigningKey) -> None:
    *_, sig = row(log12, 7)
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    tamper(log12, ("UPDATE audit SET signature = ? WHERE seq = 7", (forged,)))
    assert verify(log12, key.public).problems == [
        "entry 7: signature does not verify (hash or signature forged)"
    ]


def test_deleted_middle_entry_is_detected(log12: Path, key: SigningKey) -> None:
    tamper(log12, ("DELETE FROM audit WHERE seq = 6", ()))
    result = verify(log12, key.public)
    assert not result.ok and result.entries == N - 1
    text = problems_text(result)
    assert "seq gap before entry 7: entry 6 is missing (removed)" in text
    assert "entry 7: prev_hash does not match" in text


def test_deleted_and_renumbered_entries_are_detected(log12: Path, key: SigningKey) -> None:
    # Close the seq gap too: the chain links and the signed seq in each body still break.
    tamper(
        log12,
        ("DELETE FROM audit WHERE seq = 6", ()),
        ("UPDATE audit SET seq = seq + 100 WHERE seq > 6", ()),
        ("UPDATE audit SET seq = seq - 101 WHERE seq > 100", ()),
    )
    text = problems_text(verify(log12, key.public))
    assert "entry 6: prev_hash does not match" in text
    assert "entry 6: body says seq 7" in text


def test_swapped_bodies_are_detected(log12: Path, key: SigningKey) -> None:
    b3, *_ = row(log12, 3)
    b8, *_ = row(log12, 8)
    tamper(
        log12,
        ("UPDATE audit SET body = ? WHERE seq = 3", (b8,)),
        ("UPDATE audit SET body = ? WHERE seq = 8", (b3,)),
    )
    text = problems_text(verify(log12, key.public))
    assert "entry 3: body says seq 8 (entries moved or swapped)" in text
    assert "entry 8: body says seq 3" in text
    assert "entry 3: body does not match its hash" in text


def test_reordered_rows_are_detected(log12: Path, key: SigningKey) -> None:
    # Swap two complete rows: every entry is individually well signed.
    r3, r8 = row(log12, 3), row(log12, 8)
    tamper(
        log12,
        ("DELETE FROM audit WHERE seq IN (3, 8)", ()),
        ("INSERT INTO audit VALUES (3, ?, ?, ?, ?)", r8),
        ("INSERT INTO audit VALUES (8, ?, ?, ?, ?)", r3),
    )
    result = verify(log12, key.public)
    text = problems_text(result)
    assert "entry 3: prev_hash does not match" in text
    assert "entry 3: body says seq 8" in text
    assert "signature does not verify" not in text  # signatures are genuine, order is not


def test_truncation_is_detected_by_the_head(log12: Path, key: SigningKey) -> None:
    tamper(log12, ("DELETE FROM audit WHERE seq > 9", ()))
    result = verify(log12, key.public)
    assert result.entries == 9
    assert result.problems == [
        f"log truncated: the head records entry {N} but the log ends at entry 9"
    ]
    # Without the head, the shortened chain is internally consistent: say so plainly.
    assert verify(log12, key.public, check_head=False).ok


def test_emptied_log_is_detected(log12: Path, key: SigningKey) -> None:
    tamper(log12, ("DELETE FROM audit", ()))
    result = verify(log12, key.public)
    assert not result.ok and result.entries == 0
    assert "log truncated" in problems_text(result)


def test_head_missing_forged_or_mismatched(log12: Path, key: SigningKey) -> None:
    head = log12.with_name("audit.db.head")
    original = head.read_bytes()

    head.unlink()
    assert "head file" in problems_text(verify(log12, key.public))
    assert "missing" in problems_text(verify(log12, key.public))

    h = json.loads(original)
    head.write_text(json.dumps({**h, "seq": h["seq"] - 3}))
    assert "head signature does not verify" in problems_text(verify(log12, key.public))

    head.write_text("not json")
    assert "malformed" in problems_text(verify(log12, key.public))

    # A head signed by the right key for a different chain (log rewritten wholesale).
    other_hash = "ab" * 32
    when = "2026-03-01T09:00:00.000000Z"
    sig = key.sign(keys.AUDIT_HEAD, audit.head_message(N, other_hash, when)).hex()
    head.write_text(json.dumps({"hash": other_hash, "seq": N, "signature": sig, "time": when}))
    assert "does not have the hash the head records" in problems_text(verify(log12, key.public))

    head.write_bytes(original)
    assert verify(log12, key.public).ok
    # An explicit head path is honoured.
    moved = log12.parent / "elsewhere.head"
    head.rename(moved)
    assert verify(log12, key.public, moved).ok


def test_head_behind_after_crash_is_fine(tmp_path: Path, key: SigningKey) -> None:
    db = tmp_path / "audit.db"
    make_log(db, key, 4)
    old_head = (tmp_path / "audit.db.head").read_bytes()
    make_log(db, key, 1)
    # As if the process died between the commit of entry 5 and its head write.
    (tmp_path / "audit.db.head").write_bytes(old_head)
    assert verify(db, key.public) == audit.VerifyResult(True, 5, [])


def test_first_entry_without_head_is_fine(tmp_path: Path, key: SigningKey) -> None:
    db = tmp_path / "audit.db"
    make_log(db, key, 1)
    (tmp_path / "audit.db.head").unlink()  # crash right after the first commit
    assert verify(db, key.public).ok


def test_wrong_key_fails_with_bounded_problems(tmp_path: Path, key: SigningKey) -> None:
    db = tmp_path / "audit.db"
    make_log(db, key, audit.MAX_PROBLEMS + 20)
    result = verify(db, SigningKey.generate().public)
    assert not result.ok
    assert len(result.problems) == audit.MAX_PROBLEMS + 1
    assert result.problems[-1].startswith("... and ")


def test_verify_unreadable_inputs(tmp_path: Path, key: SigningKey) -> None:
    assert verify(tmp_path / "nope.db", key.public).problems == [
        f"{tmp_path / 'nope.db'}: no such file"
    ]
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    assert "cannot read the audit table" in problems_text(verify(junk, key.public))
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    assert "cannot read the audit table" in problems_text(verify(other, key.public))


def test_verify_does_not_modify_the_database(log12: Path, key: SigningKey) -> None:
    before = log12.read_bytes()
    assert verify(log12, key.public).ok
    assert log12.read_bytes() == before


# -- the node's shared-transaction mode ----------------------------------------------


def _shared(tmp_path: Path) -> tuple[sqlite3.Connection, threading.Lock]:
    conn = sqlite3.connect(tmp_path / "node.db", check_same_thread=False, isolation_level=None)
    conn.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, spend REAL NOT NULL)")
    return conn, threading.Lock()


def test_shared_transaction_commits_both_or_neither(
    tmp_path: Path, key: SigningKey, clock: FixedClock
) -> None:
    conn, lock = _shared(tmp_path)
    log = AuditLog.on_connection(conn, lock, key, clock)
    assert log.head_path == tmp_path / "node.db.head"

    with lock:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO ledger (spend) VALUES (0.5)")
        assert log.append_tx(body(0)).seq == 1
        conn.commit()
        log.write_head()

    with lock:  # the answer fails after the spend: both writes roll back together
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO ledger (spend) VALUES (0.25)")
        log.append_tx(body(1))
        conn.rollback()

    assert log.append(body(2)).seq == 2  # the chain continues from the committed tail
    assert conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == 1
    conn.close()
    assert verify(tmp_path / "node.db", key.public) == audit.VerifyResult(True, 2, [])


def test_shared_mode_misuse_is_refused(tmp_path: Path, key: SigningKey, clock: FixedClock) -> None:
    conn, lock = _shared(tmp_path)
    log = AuditLog.on_connection(conn, lock, key, clock)
    with pytest.raises(AuditError, match="hold the log's lock"):
        log.append_tx(body(0))
    with lock:
        with pytest.raises(AuditError, match="open transaction"):
            log.append_tx(body(0))
        conn.execute("BEGIN IMMEDIATE")
        log.append_tx(body(0))
        with pytest.raises(AuditError, match="after the transaction commits"):
            log.write_head()
        conn.rollback()
    with pytest.raises(AuditError, match="in-memory"):
        AuditLog.on_connection(sqlite3.connect(":memory:"), threading.Lock(), key, clock)
    conn.close()


# -- concurrency and crashes ---------------------------------------------------------


def test_threads_appending_keep_one_valid_chain(tmp_path: Path, key: SigningKey) -> None:
    db = tmp_path / "audit.db"
    threads, per_thread = 8, 25
    seqs: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads)
    with AuditLog.open(db, key, FixedClock(T0)) as log:

        def work(t: int) -> None:
            try:
                start.wait()
                for i in range(per_thread):
                    seqs.append(log.append(body(t * 1000 + i)).seq)
            except BaseException as e:
                errors.append(e)

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    assert errors == []
    assert sorted(seqs) == list(range(1, threads * per_thread + 1))
    assert verify(db, key.public) == audit.VerifyResult(True, threads * per_thread, [])


_CHILD = """
import sys
from pathlib import Path
from tessera.audit import AuditLog
from tessera.clock import SystemClock
from tessera.keys import SigningKey

log = AuditLog.open(Path(sys.argv[1]), SigningKey.load(Path(sys.argv[2])), SystemClock())
i = 0
while True:
    rec = log.append({"actor": "loop", "template_digest": None, "params": {"i": i},
                      "mode": "combined", "cost": None, "outcome": "OK", "message": "x" * i})
    print(rec.seq, flush=True)
    i += 1
"""


def test_sigkill_while_appending_leaves_a_valid_log(tmp_path: Path, key: SigningKey) -> None:
    db = tmp_path / "audit.db"
    key_file = tmp_path / "node.key"
    key.save(key_file)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    last_seen = 0
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(db), str(key_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        target = last_seen + 40 + 7 * round_
        try:
            while last_seen < target:
                line = proc.stdout.readline()
                assert line, f"child exited early: {proc.stderr.read() if proc.stderr else ''}"
                last_seen = int(line)
            os.kill(proc.pid, signal.SIGKILL)  # mid-append, wherever it happens to be
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        result = verify(db, key.public)
        assert result.ok, result.problems
        # Every append the child reported was committed; one more may have made it.
        assert result.entries >= last_seen
        last_seen = result.entries


# -- property: any single tamper is detected -----------------------------------------

TAMPERS = (
    "edit_body",
    "edit_hash",
    "edit_prev_hash",
    "edit_signature",
    "delete",
    "swap_bodies",
    "swap_rows",
    "truncate",
    "move",
    "duplicate",
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    bodies=st.lists(
        st.fixed_dictionaries(
            {
                "actor": st.text(max_size=8),
                "template_digest": st.one_of(st.none(), st.text("0123456789abcdef", max_size=8)),
                "params": st.dictionaries(
                    st.text(max_size=4), st.integers(-(2**40), 2**40), max_size=3
                ),
                "mode": st.sampled_from(["combined", "per_node"]),
                "cost": st.one_of(st.none(), st.integers(0, 100)),
                "outcome": st.sampled_from(["OK", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"]),
                "message": st.text(max_size=10),
            }
        ),
        min_size=1,
        max_size=12,
    ),
    kind=st.sampled_from(TAMPERS),
    data=st.data(),
)
def test_any_single_tamper_is_detected(
    bodies: list[dict[str, object]], kind: str, data: st.DataObject
) -> None:
    key = _PROPERTY_KEY
    n = len(bodies)
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "audit.db"
        with AuditLog.open(db, key, FixedClock(T0)) as log:
            for b in bodies:
                log.append(b)
        assert verify(db, key.public).ok

        i = data.draw(st.integers(1, n), label="i")
        b_i, prev_i, h_i, sig_i = row(db, i)
        if kind in ("swap_bodies", "swap_rows"):
            if n < 2:
                kind = "delete"
            else:
                j = data.draw(st.integers(1, n).filter(lambda x: x != i), label="j")
                b_j, prev_j, h_j, sig_j = row(db, j)
        if kind == "edit_body":
            fields = canonical.decode(b_i)
            field = data.draw(st.sampled_from(sorted(fields)), label="field")
            fields[field] = [fields[field], "tampered"]
            tamper(db, ("UPDATE audit SET body = ? WHERE seq = ?", (canonical.encode(fields), i)))
        elif kind == "edit_hash":
            new = data.draw(st.binary(min_size=32, max_size=32).map(bytes.hex), label="hash")
            if new == h_i:
                new = "f" * 64
            tamper(db, ("UPDATE audit SET hash = ? WHERE seq = ?", (new, i)))
        elif kind == "edit_prev_hash":
            tamper(db, ("UPDATE audit SET prev_hash = ? WHERE seq = ?", ("1" * 64, i)))
        elif kind == "edit_signature":
            pos = data.draw(st.integers(0, len(sig_i) - 1), label="pos")
            bit = data.draw(st.integers(0, 7), label="bit")
            forged = bytearray(sig_i)
            forged[pos] ^= 1 << bit
            tamper(db, ("UPDATE audit SET signature = ? WHERE seq = ?", (bytes(forged), i)))
        elif kind == "delete":
            tamper(db, ("DELETE FROM audit WHERE seq = ?", (i,)))
        elif kind == "swap_bodies":
            tamper(
                db,
                ("UPDATE audit SET body = ? WHERE seq = ?", (b_j, i)),
                ("UPDATE audit SET body = ? WHERE seq = ?", (b_i, j)),
            )
        elif kind == "swap_rows":
            tamper(
                db,
                ("DELETE FROM audit WHERE seq IN (?, ?)", (i, j)),
                ("INSERT INTO audit VALUES (?, ?, ?, ?, ?)", (i, b_j, prev_j, h_j, sig_j)),
                ("INSERT INTO audit VALUES (?, ?, ?, ?, ?)", (j, b_i, prev_i, h_i, sig_i)),
            )
        elif kind == "truncate":
            tamper(db, ("DELETE FROM audit WHERE seq >= ?", (i,)))
        elif kind == "move":
            tamper(db, ("UPDATE audit SET seq = ? WHERE seq = ?", (n + 5, i)))
        elif kind == "duplicate":
            tamper(
                db, ("INSERT INTO audit VALUES (?, ?, ?, ?, ?)", (n + 1, b_i, prev_i, h_i, sig_i))
            )
        result = verify(db, key.public)
        assert not result.ok, (kind, i)
        assert result.problems


_PROPERTY_KEY = SigningKey.generate()


# -- the CLI --------------------------------------------------------------------------


def test_cli_verify_ok_and_failed(
    log12: Path, key: SigningKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "node.key"
    key.save(key_file)
    pub = tmp_path / "node.key.pub"

    assert cli_main(["audit", "verify", str(log12), "--key", str(pub)], {}) == 0
    assert f"OK: {N} entries" in capsys.readouterr().out
    assert cli_main(["audit", "verify", str(log12), "--key", key.public.key_id], {}) == 0
    capsys.readouterr()

    tamper(log12, ("DELETE FROM audit WHERE seq > 10", ()))
    assert cli_main(["audit", "verify", str(log12), "--key", str(pub)], {}) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "log truncated" in out
    args = ["audit", "verify", str(log12), "--key", str(pub), "--no-head"]
    assert cli_main(args, {}) == 0
    capsys.readouterr()

    moved = tmp_path / "h"
    shutil.copy(log12.with_name("audit.db.head"), moved)
    assert (
        cli_main(["audit", "verify", str(log12), "--key", str(pub), "--head", str(moved)], {}) == 1
    )
    capsys.readouterr()


def test_cli_verify_refuses_a_private_key_without_echoing_it(
    log12: Path, key: SigningKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "node.key"
    key.save(key_file)
    assert cli_main(["audit", "verify", str(log12), "--key", str(key_file)], {}) == 2
    captured = capsys.readouterr()
    assert "does not hold a public key id" in captured.err
    assert "PRIVATE KEY" not in captured.err + captured.out
    assert cli_main(["audit", "verify", str(log12), "--key", "ed25519:zz"], {}) == 2
    assert cli_main(["audit", "verify", str(log12), "--key", str(tmp_path / "none")], {}) == 2


def test_cli_show(
    log12: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps at 80 columns off a terminal
    assert cli_main(["audit", "show", str(log12), "--last", "3"], {}) == 0
    out = capsys.readouterr().out
    assert "request 11" in out and "request 9" in out and "request 8" not in out
    assert cli_main(["audit", "show", str(log12.parent / "missing.db")], {}) == 1


def test_cli_show_escapes_markup(
    tmp_path: Path,
    key: SigningKey,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    db = tmp_path / "audit.db"
    with AuditLog.open(db, key, FixedClock(T0)) as log:
        log.append(body(0, actor="[bold red]mallory[/]"))
    assert cli_main(["audit", "show", str(db)], {}) == 0
    assert "[bold red]mallory[/]" in capsys.readouterr().out


# -- anchored audit: batched heads for free entries, timestamps, coordinator receipts --


def test_free_entries_are_covered_by_a_head_before_ensure_head_returns(
    tmp_path: Path, key: SigningKey, clock: FixedClock
) -> None:
    """The node commits free answers without writing a head itself; ensure_head must
    cover them, so deleting the newest entries is caught by the head alone."""
    conn, lock = _shared(tmp_path)
    log = AuditLog.on_connection(conn, lock, key, clock)
    seqs = []
    for i in range(5):
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            seqs.append(log.append_tx(body(i)).seq)
            conn.commit()
        log.ensure_head(seqs[-1])
    head = json.loads(log.head_path.read_bytes())
    assert head["seq"] == 5 and head["time"] == "2026-03-01T09:00:00.000000Z"
    db = tmp_path / "node.db"
    assert verify(db, key.public).ok
    conn.close()
    tamper(db, ("DELETE FROM audit WHERE seq >= 4", ()))
    assert "log truncated: the head records entry 5" in problems_text(verify(db, key.public))


def test_waiting_committers_share_head_writes(
    tmp_path: Path, key: SigningKey, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, lock = _shared(tmp_path)
    log = AuditLog.on_connection(conn, lock, key, clock)
    writes: list[int] = []
    real = audit._overwrite
    gate = threading.Event()

    def slow_write(path: Path, data: bytes) -> None:
        writes.append(json.loads(data)["seq"])
        gate.wait(timeout=5)  # the first head write is slow: others commit meanwhile
        real(path, data)

    monkeypatch.setattr(audit, "_overwrite", slow_write)
    n = 16
    done = threading.Barrier(n + 1)

    def commit_one(i: int) -> None:
        with lock:
            conn.execute("BEGIN IMMEDIATE")
            seq = log.append_tx(body(i)).seq
            conn.commit()
        done.wait(timeout=10)
        log.ensure_head(seq)

    threads = [threading.Thread(target=commit_one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    done.wait(timeout=10)
    gate.set()
    for t in threads:
        t.join(timeout=10)
    # Every commit is covered, by far fewer head writes than commits.
    assert json.loads(log.head_path.read_bytes())["seq"] == n
    assert 1 <= len(writes) <= 2, writes
    conn.close()


def _coordinator_log(path: Path, key: SigningKey, node_db: Path, org: str) -> None:
    """A coordinator log holding a receipt for every answer entry of the node's log."""
    entries = audit.read_entries(node_db)
    with AuditLog.open(path, key, FixedClock(T0)) as log:
        for e in entries:
            f = e.fields()
            receipt = {"seq": e.seq, "hash": e.hash, "payload_sha256": f["payload_sha256"]}
            log.append(body(e.seq, receipts={org: receipt}))


def _node_log(path: Path, key: SigningKey, n: int, start: int = 0) -> None:
    with AuditLog.open(path, key, FixedClock(T0)) as log:
        for i in range(start, start + n):
            log.append(body(i, payload_sha256=f"{i:064x}"))


@pytest.fixture
def anchored(tmp_path: Path, key: SigningKey) -> tuple[Path, Path, SigningKey]:
    """A node log of 12 answers and a backup copy taken after 8, plus the coordinator's
    receipts for all 12."""
    node_db = tmp_path / "node" / "ledger.sqlite"
    node_db.parent.mkdir()
    _node_log(node_db, key, 8)
    backup = tmp_path / "backup"
    backup.mkdir()
    for f in node_db.parent.iterdir():
        shutil.copy2(f, backup / f.name)
    _node_log(node_db, key, 4, start=8)
    coordinator_key = SigningKey.generate()
    coordinator_db = tmp_path / "coordinator.db"
    _coordinator_log(coordinator_db, coordinator_key, node_db, "Leeds")
    return node_db, coordinator_db, coordinator_key


def _against(node_db: Path, key: SigningKey, coordinator_db: Path, ck: SigningKey) -> str:
    theirs, receipts = audit.receipts(coordinator_db, ck.public, "Leeds")
    assert theirs.ok and len(receipts) == 12
    result = verify(node_db, key.public, against=receipts)
    return "" if result.ok else problems_text(result)


def test_a_node_log_matches_the_coordinators_receipts(
    anchored: tuple[Path, Path, SigningKey], key: SigningKey
) -> None:
    node_db, coordinator_db, ck = anchored
    assert _against(node_db, key, coordinator_db, ck) == ""


def test_a_log_restored_from_an_older_copy_is_caught_only_by_the_receipts(
    anchored: tuple[Path, Path, SigningKey], key: SigningKey
) -> None:
    node_db, coordinator_db, ck = anchored
    backup = node_db.parent.parent / "backup"
    for f in node_db.parent.iterdir():
        f.unlink()
    for f in backup.iterdir():
        shutil.copy2(f, node_db.parent / f.name)
    # The old copy and its own head are self-consistent...
    assert verify(node_db, key.public).ok
    # ...but the coordinator holds receipts the restored log never had.
    text = _against(node_db, key, coordinator_db, ck)
    assert "log restored from an older copy or truncated" in text
    assert "4 receipt(s) past the end of this log (entry 12" in text
    assert "ends at entry 8" in text


def test_deleting_the_last_entries_is_caught_alone_and_against_the_coordinator(
    anchored: tuple[Path, Path, SigningKey], key: SigningKey
) -> None:
    node_db, coordinator_db, ck = anchored
    tamper(node_db, ("DELETE FROM audit WHERE seq > 10", ()))
    assert "log truncated: the head records entry 12" in problems_text(verify(node_db, key.public))
    text = _against(node_db, key, coordinator_db, ck)
    assert "2 receipt(s) past the end of this log" in text


def test_editing_an_entry_is_caught_alone_and_against_the_coordinator(
    anchored: tuple[Path, Path, SigningKey], key: SigningKey
) -> None:
    node_db, coordinator_db, ck = anchored
    b, _, _, _ = row(node_db, 5)
    edited = canonical.encode({**canonical.decode(b), "payload_sha256": "e" * 64})
    tamper(node_db, ("UPDATE audit SET body = ? WHERE seq = 5", (edited,)))
    assert "entry 5: body does not match its hash (edited)" in problems_text(
        verify(node_db, key.public)
    )
    assert "entry 5 records another payload than the node's signed answer" in _against(
        node_db, key, coordinator_db, ck
    )


def test_a_rewritten_tail_is_caught_against_the_coordinator(
    tmp_path: Path, key: SigningKey
) -> None:
    """The node's key holder rewrites the last entries (new chain, new head): only the
    coordinator's receipts, signed with another key, can tell."""
    node_db = tmp_path / "n" / "ledger.sqlite"
    node_db.parent.mkdir()
    _node_log(node_db, key, 6)
    ck = SigningKey.generate()
    coordinator_db = tmp_path / "c.db"
    _coordinator_log(coordinator_db, ck, node_db, "Leeds")
    tamper(node_db, ("DELETE FROM audit WHERE seq > 3", ()))
    with AuditLog.open(node_db, key, FixedClock(T0)) as log:
        for i in range(3):
            log.append(body(100 + i, payload_sha256="f" * 64))
    assert verify(node_db, key.public).ok
    _, receipts = audit.receipts(coordinator_db, ck.public, "Leeds")
    text = problems_text(verify(node_db, key.public, against=receipts))
    for seq in (4, 5, 6):
        assert f"entry {seq} does not have the hash the coordinator's receipt records" in text


def test_cli_verify_against_the_coordinator(
    anchored: tuple[Path, Path, SigningKey],
    key: SigningKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node_db, coordinator_db, ck = anchored
    args = ["audit", "verify", str(node_db), "--key", key.public.key_id]
    against = ["--against", str(coordinator_db), "--node", "Leeds"]
    assert cli_main([*args, *against, "--coordinator-key", ck.public.key_id], {}) == 0
    assert "12 receipts for Leeds" in capsys.readouterr().out
    assert cli_main([*args, *against], {}) == 2
    tamper(node_db, ("DELETE FROM audit WHERE seq > 10", ()))
    assert cli_main([*args, *against, "--coordinator-key", ck.public.key_id], {}) == 1
    assert "receipt(s) past the end of this log" in capsys.readouterr().out
