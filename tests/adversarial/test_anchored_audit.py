"""Anchored audit with a real region: the coordinator's signed log holds a receipt for
every answer a node released, and `tessera audit verify --against` uses them to name a
node log that was cut short, edited, or restored from an older backup."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera import audit, canonical
from tessera.cli.main import main as cli
from tests.support import coordinator as region_lib

T1 = "cla-by-age-and-placement"


@pytest.fixture
def region(tmp_path: Path) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path, distinct_node_keys=True)
    try:
        region_lib.published(r, T1, quorum=2)
        yield r
    finally:
        r.stop()


def _ask(region: region_lib.Region, days: range) -> None:
    analyst = region.analyst()
    for day in days:
        # Each answer once, and then again from the cache (free): both are receipted.
        for _ in range(2):
            assert analyst.run_query(T1, {"on_date": f"2025-03-{day:02d}"}).released


def _backup(db: Path, to: Path) -> None:
    """A consistent copy of a live SQLite database, and its head file."""
    to.parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(db), sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    shutil.copy2(audit.default_head_path(db), audit.default_head_path(to))


def _verify(region: region_lib.Region, db: Path, *against: str) -> int:
    node_key = region.fed.key_of("Leeds").public.key_id
    args = ["audit", "verify", str(db), "--key", node_key]
    if against:
        coordinator_key = Path(str(region.cfg.signing_key) + ".pub").read_text().strip()
        coordinator_db = region.cfg.state_dir / "coordinator.sqlite"
        args += ["--against", str(coordinator_db), "--node", "Leeds"]
        args += ["--coordinator-key", coordinator_key]
    return cli(args, {})


def test_a_node_log_restored_from_a_backup_is_named_against_the_coordinator(
    region: region_lib.Region, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leeds = region.nodes["Leeds"]
    db = leeds.service.cfg.state_dir / "ledger.sqlite"
    _ask(region, range(1, 4))
    backup = tmp_path / "backup" / "ledger.sqlite"
    _backup(db, backup)
    _ask(region, range(4, 6))
    # Every answer, free ones included, is covered by the node's head already.
    head = canonical.decode(audit.default_head_path(db).read_bytes().rstrip())
    last = leeds.service.ledger.audit_log.last()
    assert last is not None and head["seq"] == last.seq
    assert _verify(region, db, "against") == 0
    capsys.readouterr()

    region.stop_node("Leeds")
    shutil.copy2(backup, db)
    shutil.copy2(audit.default_head_path(backup), audit.default_head_path(db))
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    # Alone, the old copy and its head are consistent...
    assert _verify(region, db) == 0
    capsys.readouterr()
    # ...against the coordinator's receipts it is named.
    assert _verify(region, db, "against") == 1
    out = capsys.readouterr().out
    assert "log restored from an older copy or truncated" in out
    assert "4 receipt(s) past the end of this log" in out


def test_cut_and_edited_node_logs_are_named_alone_and_against_the_coordinator(
    region: region_lib.Region, capsys: pytest.CaptureFixture[str]
) -> None:
    _ask(region, range(1, 4))
    db = region.nodes["Leeds"].service.cfg.state_dir / "ledger.sqlite"
    last = region.nodes["Leeds"].service.ledger.audit_log.last()
    assert last is not None
    region.stop_node("Leeds")
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DELETE FROM audit WHERE seq > ?", (last.seq - 2,))
    finally:
        conn.close()
    assert _verify(region, db) == 1
    assert "log truncated" in capsys.readouterr().out
    assert _verify(region, db, "against") == 1
    assert "receipt(s) past the end of this log" in capsys.readouterr().out

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        row = conn.execute("SELECT seq, body FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        edited = bytes(row[1]).replace(b'"outcome":"OK"', b'"outcome":"NO"')
        conn.execute("UPDATE audit SET body = ? WHERE seq = ?", (edited, row[0]))
    finally:
        conn.close()
    assert _verify(region, db) == 1
    assert "(edited)" in capsys.readouterr().out
