"""Rotating a node's signing key keeps its audit chain verifiable, under the old key
and the new one; a key swapped in without the handover is refused in two lines."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tessera import audit, config
from tessera.clock import SystemClock
from tessera.keys import SigningKey
from tessera.node import keyrotation
from tessera.node.main import start
from tessera.startup import StartupError
from tessera.wire.v1 import node_pb2
from tests.support import federation as fedlib

TESSERA = (sys.executable, "-c", "from tessera.cli.main import entry; entry()")
T1 = "cla-by-age-and-placement"


def _answer(fed: fedlib.Federation, cfg: object, days: list[str]) -> list[int]:
    node = start(cfg)  # type: ignore[arg-type]
    try:
        stub = fedlib.node_stub(fed, node.port)
        signed = fedlib.sign_template(fed.template(T1), fed.approvers[:2])
        seqs = [
            stub.Execute(fedlib.execute_request(fed, signed, {"on_date": d})).audit_seq
            for d in days
        ]
        described = stub.Describe(node_pb2.DescribeRequest())
        assert described.node_key == node.service.key.public.key_id
        return seqs
    finally:
        node.stop(0)


def test_rotation_keeps_the_chain_verifiable_under_both_keys(
    fed: fedlib.Federation, tmp_path: Path
) -> None:
    cfg = fedlib.node_config(fed, "Leeds")
    fedlib.ingest_council(fed, cfg)
    old = fed.node_key
    before = _answer(fed, cfg, ["2025-03-31", "2024-03-31"])

    new = SigningKey.generate()
    new_path = tmp_path / "keys" / "node-2026.key"
    new.save(new_path)
    done = keyrotation.rotate(cfg, new_path)
    assert done.old_key == old.public.key_id and done.new_key == new.public.key_id
    assert done.handover_seq > max(before) and done.accepted_seq == done.handover_seq + 1

    rotated = dataclasses.replace(cfg, signing_key=new_path)
    after = _answer(fed, rotated, ["2023-03-31"])
    assert after[0] > done.accepted_seq

    ledger = cfg.state_dir / "ledger.sqlite"
    for key in (old.public, new.public):
        result = audit.verify(ledger, key)
        assert result.ok, result.problems
        assert result.entries == after[0]
    outcomes = [json.loads(e.body)["outcome"] for e in audit.read_entries(ledger)]
    assert outcomes[done.handover_seq - 1 : done.accepted_seq] == ["key_rotated", "key_accepted"]
    # A stranger's key does not verify it.
    assert not audit.verify(ledger, SigningKey.generate().public).ok


def test_a_handover_nobody_accepted_does_not_verify(fed: fedlib.Federation) -> None:
    """Anyone can name a public key in a handover; the log counts as that key's only
    once the key has signed an entry after it."""
    cfg = fedlib.node_config(fed, "Leeds")
    ledger = cfg.state_dir / "ledger.sqlite"
    ledger.parent.mkdir(parents=True, exist_ok=True)
    forger = SigningKey.generate()
    victim = SigningKey.generate().public
    with audit.AuditLog.open(ledger, forger, SystemClock()) as log:
        log.append(
            {
                "actor": "x",
                "template_digest": None,
                "params": None,
                "mode": None,
                "cost": None,
                "outcome": "answered",
                "message": None,
            }
        )
        log.rotate(victim)
    result = audit.verify(ledger, victim, check_head=False)
    assert not result.ok
    assert any("signed no entry" in p for p in result.problems)


def test_rotation_refuses_while_the_node_listens(fed: fedlib.Federation, tmp_path: Path) -> None:
    cfg = fedlib.node_config(fed, "Leeds")
    new_path = tmp_path / "new.key"
    SigningKey.generate().save(new_path)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = dataclasses.replace(cfg, listen=f"127.0.0.1:{held.getsockname()[1]}")
        with pytest.raises(StartupError, match="stop the node"):
            keyrotation.rotate(busy, new_path)


def test_a_key_swapped_in_without_rotation_is_refused_in_two_lines(
    fed: fedlib.Federation, tmp_path: Path
) -> None:
    cfg = fedlib.node_config(fed, "Leeds")
    fedlib.ingest_council(fed, cfg)
    _answer(fed, cfg, ["2025-03-31"])
    other = tmp_path / "other.key"
    SigningKey.generate().save(other)
    path = tmp_path / "node.toml"
    path.write_text(config.dump(dataclasses.replace(cfg, signing_key=other)))
    out = subprocess.run(
        [*TESSERA, "node", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert 1 <= len(out.stderr.strip().splitlines()) <= 2
    assert "not signed by this" in out.stderr


def test_the_rotate_key_command(fed: fedlib.Federation, tmp_path: Path) -> None:
    cfg = fedlib.node_config(fed, "Leeds")
    fedlib.ingest_council(fed, cfg)
    _answer(fed, cfg, ["2025-03-31"])
    path = tmp_path / "node.toml"
    path.write_text(config.dump(cfg))
    new_path = tmp_path / "new.key"
    SigningKey.generate().save(new_path)
    out = subprocess.run(
        [*TESSERA, "node", "rotate-key", "--config", str(path), "--new-key", str(new_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "hand the log from" in out.stdout and "signing_key" in out.stdout
    again = subprocess.run(
        [*TESSERA, "node", "rotate-key", "--config", str(path), "--new-key", str(new_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2
    assert "Traceback" not in again.stderr
    assert "already handed over" in again.stderr and "signing_key" in again.stderr


def test_the_coordinator_rotates_its_key_and_keeps_its_chain(tmp_path: Path) -> None:
    from tessera.coordinator import keyrotation as coordinator_rotation
    from tessera.coordinator import main as coordinator_main
    from tests.support import coordinator as coordlib

    region = coordlib.start_region(tmp_path, ("Leeds",))
    try:
        coordlib.published(region, T1)
        region.analyst().run_query(T1, {"on_date": "2025-03-31"}, mode="combined")
        old = SigningKey.load(region.cfg.signing_key)
        region.coordinator.stop(0)
        region.coordinator = None
        new_path = tmp_path / "coordinator-2027.key"
        new = SigningKey.generate()
        new.save(new_path)
        done = coordinator_rotation.rotate(region.cfg, new_path)
        assert done.accepted_seq == done.handover_seq + 1
        region.cfg = dataclasses.replace(region.cfg, signing_key=new_path)
        region.coordinator = coordinator_main.start(region.cfg)
        # The register survived: the template is still published, and queries go on.
        region.analyst().run_query(T1, {"on_date": "2024-03-31"}, mode="combined")
        region.coordinator.stop(0)
        region.coordinator = None
        db = region.cfg.state_dir / "coordinator.sqlite"
        for key in (old.public, new.public):
            result = audit.verify(db, key)
            assert result.ok, result.problems
            assert result.entries > done.accepted_seq
    finally:
        region.stop()
