"""Backups of a running node: taken while a node process answers requests, encrypted,
verified; a restore gives a ledger that `tessera audit verify` accepts with no row
lost, and a restore that would roll spend back is refused."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tessera import config
from tessera.cli.main import main as cli
from tessera.demo.processes import Processes
from tessera.node import vault
from tessera.node.config import NodeConfig
from tests.support import federation as fedlib

T2 = "referrals-by-need-and-age"
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}


def _paid(i: int) -> dict[str, str]:
    """A distinct question each time: a new release, paid for."""
    return {"period_start": "2025-04-01", "period_end": f"2026-03-{1 + i:02d}"}


@dataclass
class Node:
    fed: fedlib.Federation
    cfg: NodeConfig
    config_path: Path
    port: int
    signed: Any
    processes: Processes


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    fed = fedlib.make(tmp_path)
    cfg = fedlib.node_config(fed, "Leeds")
    fedlib.ingest_council(fed, cfg)
    path = tmp_path / "node.toml"
    path.write_text(config.dump(cfg))
    signed = fedlib.sign_template(fed.template(T2), fed.approvers[:2])
    with Processes(tmp_path / "logs") as processes:
        child = processes.start("node", "tessera.node.main", ["--config", str(path)])
        yield Node(fed, cfg, path, child.port, signed, processes)


@dataclass
class Load:
    """Clients hammering the node from threads until stopped."""

    node: Node
    paid_questions: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    answered: int = 0
    refused: int = 0
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _client(self, paid_from: int, paid_step: int) -> None:
        stub = fedlib.node_stub(self.node.fed, self.node.port)
        i = paid_from
        while not self.stop.is_set():
            if i < self.paid_questions:
                params, i = _paid(i), i + paid_step
            else:
                params = P2  # answered before: free, but still a request and an audit entry
            try:
                stub.Execute(fedlib.execute_request(self.node.fed, self.node.signed, params))
                with self.lock:
                    self.answered += 1
            except grpc.RpcError:
                with self.lock:
                    self.refused += 1

    def __enter__(self) -> Load:
        for n in range(3):
            t = threading.Thread(target=self._client, args=(n, 3), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def _rows(ledger: Path, table: str, order: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return con.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
    finally:
        con.close()


def _audit_count(ledger: Path) -> int:
    return len(_rows(ledger, "audit", "seq"))


def _backup_under_load(node: Node, out: Path, paid: int) -> tuple[int, int, int]:
    """Audit entries and requests committed before the backup started, and audit
    entries committed by the time it finished."""
    ledger = node.cfg.state_dir / "ledger.sqlite"
    with Load(node, paid_questions=paid) as load:
        start = _audit_count(ledger)
        while _audit_count(ledger) < start + 20:  # the load is under way
            assert all(t.is_alive() for t in load.threads)
        before = _audit_count(ledger)
        requests = len(_rows(ledger, "requests", "request_id"))
        assert cli(["node", "backup", "--config", str(node.config_path), "--out", str(out)]) == 0
        after = _audit_count(ledger)
    assert load.answered > 0
    return before, requests, after


def test_backup_under_load_restores_verified_with_no_row_lost(
    tmp_path: Path, node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = node.cfg
    ledger = cfg.state_dir / "ledger.sqlite"
    stub = fedlib.node_stub(node.fed, node.port)
    stub.Execute(fedlib.execute_request(node.fed, node.signed, P2))  # paid, then free

    # A: taken while new questions are being paid for.
    old = tmp_path / "backups" / "a.tsb"
    _backup_under_load(node, old, paid=9)
    # One more paid answer after A: the node's watermark is now beyond A.
    stub.Execute(fedlib.execute_request(node.fed, node.signed, _paid(20)))

    # B: taken while the node answers (free repeats and refusals) at full speed.
    new = tmp_path / "backups" / "b.tsb"
    before, before_requests, after = _backup_under_load(node, new, paid=0)
    assert after > before  # entries were committed while the backup ran
    assert stat_mode(new) == 0o600
    capsys.readouterr()

    node.processes.stop_all()
    original = {
        "audit": _rows(ledger, "audit", "seq"),
        "requests": _rows(ledger, "requests", "request_id"),
        "releases": _rows(ledger, "releases", "answer_key"),
        "accountant_spent": _rows(ledger, "accountant_spent", "accountant, period"),
    }

    # The backup is ciphertext: no ledger, no audit body, no version is readable in it.
    for archive in (old, new):
        text = subprocess.run(["strings", "-n", "8", str(archive)], capture_output=True).stdout
        assert b"SQLite format" not in text and b"template_digest" not in text
        assert b"Leeds" not in text

    # The state folder is lost; the node is stopped.
    shutil.move(cfg.state_dir, tmp_path / "lost-state")

    # Restoring A would hand back spend already paid out: refused, nothing written.
    assert cli(["node", "restore", "--config", str(node.config_path), str(old)]) == 2
    err = capsys.readouterr().err
    assert "went backwards" in err and len(err.strip().splitlines()) == 1
    assert not ledger.exists()

    # B restores.
    assert cli(["node", "restore", "--config", str(node.config_path), str(new)]) == 0
    assert stat_mode(cfg.state_dir) == 0o700 and stat_mode(ledger) == 0o600
    key_id = node.fed.key_of("Leeds").public.key_id
    assert cli(["audit", "verify", str(ledger), "--key", key_id]) == 0
    assert "OK:" in capsys.readouterr().out

    restored_audit = _rows(ledger, "audit", "seq")
    # No row lost: everything committed before the backup began is there, and what is
    # there is exactly the live log's first entries, byte for byte.
    assert len(restored_audit) >= before
    assert restored_audit == original["audit"][: len(restored_audit)]
    restored_requests = set(_rows(ledger, "requests", "request_id"))
    assert restored_requests <= set(original["requests"])
    assert len(restored_requests) >= before_requests
    # Spend and releases are exactly the live node's: nothing was paid after B.
    assert _rows(ledger, "releases", "answer_key") == original["releases"]
    assert _rows(ledger, "accountant_spent", "accountant, period") == original["accountant_spent"]

    # The restored node starts (the rollback check passes) and serves its sealed answers.
    from tessera.node.main import start

    running = start(cfg)
    try:
        reply = fedlib.node_stub(node.fed, running.port).Execute(
            fedlib.execute_request(node.fed, node.signed, P2)
        )
        assert reply.answer.from_cache
    finally:
        running.stop(0)


def test_restore_refuses_a_state_folder_that_holds_a_ledger(
    tmp_path: Path, node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.tsb"
    assert cli(["node", "backup", "--config", str(node.config_path), "--out", str(out)]) == 0
    assert cli(["node", "backup", "--config", str(node.config_path), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli(["node", "restore", "--config", str(node.config_path), str(out)]) == 2
    assert "stop the node" in capsys.readouterr().err


def test_a_damaged_or_foreign_backup_is_refused(
    tmp_path: Path, node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.tsb"
    assert cli(["node", "backup", "--config", str(node.config_path), "--out", str(out)]) == 0
    node.processes.stop_all()
    shutil.move(node.cfg.state_dir, tmp_path / "lost-state")
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 1
    damaged = tmp_path / "damaged.tsb"
    damaged.write_bytes(bytes(data))
    assert cli(["node", "restore", "--config", str(node.config_path), str(damaged)]) == 2
    assert "does not open" in capsys.readouterr().err
    other = tmp_path / "other.key"
    vault.write_key_file(other, vault.DataKey.generate())
    env = {**os.environ, vault.ENV_KEY_FILE: str(other)}
    assert cli(["node", "restore", "--config", str(node.config_path), str(out)], env) == 2
    assert "sealed under data key" in capsys.readouterr().err
    assert not (node.cfg.state_dir / "ledger.sqlite").exists()


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777
