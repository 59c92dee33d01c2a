"""Refusing a state folder that went backwards.

Restoring the state folder from an old backup (or copying in another node's) would
roll spend back: questions already paid for could be paid for again, and the budget
would look fuller than it is. After each paid commit the node writes a *watermark*
outside the state folder (by default in its data folder), signed with the node key:
the audit log's sequence number and hash at that commit, and every accountant's
lifetime spend. At start the ledger must be at or beyond the watermark: its audit
log must hold the watermark's entry with the same hash, and no accountant may have
spent less. Otherwise the node refuses to start.

The watermark is one small file, fsynced and renamed into place once per paid
answer. A crash between the ledger's commit and the watermark's write leaves the
watermark behind the ledger, which is allowed: it never runs ahead.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from tessera import canonical, keys
from tessera.keys import SigningKey
from tessera.node.config import NodeConfig

DOMAIN = b"tessera/v1/rollback-watermark\x00"
# OpenDP's composed totals can differ from a recomputation in the last bits.
_TOLERANCE = 1e-9


class RollbackError(RuntimeError):
    """The ledger is behind the node's watermark: the state folder went backwards."""


def _body(organisation: str, seq: int, hash_: str, spent: dict[str, float]) -> dict[str, Any]:
    return {
        "organisation": organisation,
        "audit_seq": seq,
        "audit_hash": hash_,
        "lifetime_rho": {k: float(v) for k, v in sorted(spent.items())},
    }


class Watermark:
    """Writes the watermark; call `advance` with the ledger's lock held (Ledger's
    `on_paid` does), so writes never interleave."""

    def __init__(self, path: Path, organisation: str, key: SigningKey) -> None:
        self.path = path
        self._organisation = organisation
        self._key = key
        self._lock = threading.Lock()

    def advance(self, seq: int, hash_: str, spent: dict[str, float]) -> None:
        body = _body(self._organisation, seq, hash_, spent)
        signature = self._key.sign(DOMAIN, canonical.encode(body))
        data = json.dumps({**body, "signature": base64.b64encode(signature).decode()}).encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            # If the rename is lost to a power cut, the old watermark stays: behind, safe.
            os.replace(tmp, self.path)


def watermark_for(cfg: NodeConfig, key: SigningKey) -> Watermark:
    return Watermark(cfg.watermark_path, cfg.organisation, key)


def read_watermark(
    path: Path, organisation: str, node_key: keys.PublicKey
) -> dict[str, Any] | None:
    """The verified watermark at `path`, or None if there is none. A watermark that
    does not verify under the node's key is refused, never ignored."""
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RollbackError(f"{path}: the rollback watermark cannot be read ({e})") from None
    try:
        body = _body(
            str(raw["organisation"]),
            int(raw["audit_seq"]),
            str(raw["audit_hash"]),
            {str(k): float(v) for k, v in dict(raw["lifetime_rho"]).items()},
        )
        signature = base64.b64decode(raw["signature"])
    except (KeyError, TypeError, ValueError):
        raise RollbackError(f"{path}: not a rollback watermark") from None
    if not node_key.verify(DOMAIN, canonical.encode(body), signature):
        raise RollbackError(
            f"{path}: the rollback watermark is not signed by this node's key; "
            "it was altered or belongs to another node"
        )
    if body["organisation"] != organisation:
        raise RollbackError(f"{path}: the rollback watermark belongs to {body['organisation']}")
    return body


def _ledger_state(ledger_path: Path) -> tuple[int, dict[str, float]] | None:
    """(last audit seq, lifetime spend per accountant), read-only; None if no ledger."""
    if not ledger_path.exists():
        return None
    con = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        last = 0
        if "audit" in tables:
            row = con.execute("SELECT max(seq) FROM audit").fetchone()
            last = int(row[0]) if row and row[0] is not None else 0
        spent: dict[str, float] = {}
        if "accountant_spent" in tables:
            spent = {
                str(a): float(r)
                for a, r in con.execute(
                    "SELECT accountant, rho FROM accountant_spent WHERE period = 'lifetime'"
                )
            }
        return last, spent
    finally:
        con.close()


def _hash_at(ledger_path: Path, seq: int) -> str | None:
    con = sqlite3.connect(f"file:{ledger_path}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()


def check_not_rolled_back(cfg: NodeConfig, ledger_path: Path) -> None:
    """Raise RollbackError unless the ledger at `ledger_path` is at or beyond the node's
    watermark. A node with no watermark yet (first start) passes, unless its ledger has
    paid answers, which means the watermark was removed."""
    key = SigningKey.load(cfg.signing_key)
    mark = read_watermark(cfg.watermark_path, cfg.organisation, key.public)
    state = _ledger_state(ledger_path)
    if mark is None:
        if state is not None and any(v > 0 for v in state[1].values()):
            raise RollbackError(
                f"the rollback watermark {cfg.watermark_path} is missing but the ledger "
                f"{ledger_path} has paid answers; restore it, or if it is lost and this "
                "state folder is the latest, run `tessera node adopt-ledger`"
            )
        return
    seq = int(mark["audit_seq"])
    if state is None or state[0] < seq:
        have = 0 if state is None else state[0]
        raise RollbackError(
            f"the ledger {ledger_path} went backwards: its audit log ends at entry {have}, "
            f"but entry {seq} was already written; restore the latest state folder, "
            "never an older backup"
        )
    if seq and _hash_at(ledger_path, seq) != mark["audit_hash"]:
        raise RollbackError(
            f"the ledger {ledger_path} is not this node's history: audit entry {seq} "
            "differs from the one the watermark recorded; restore the latest state folder"
        )
    for accountant, rho in mark["lifetime_rho"].items():
        have_rho = state[1].get(accountant, 0.0)
        if have_rho < rho * (1 - _TOLERANCE):
            raise RollbackError(
                f"the ledger {ledger_path} went backwards: accountant {accountant} shows "
                f"rho {have_rho:.6g} spent, but {rho:.6g} was already spent; restore the "
                "latest state folder, never an older backup"
            )


def adopt(cfg: NodeConfig, ledger_path: Path) -> tuple[int, dict[str, float]]:
    """Write a watermark for the ledger as it stands: the operator's explicit decision
    when the watermark itself was lost (`tessera node adopt-ledger`). Returns the audit
    position and spend it records. Never done automatically: a ledger cannot vouch
    for itself."""
    state = _ledger_state(ledger_path)
    if state is None:
        raise RollbackError(f"{ledger_path}: no ledger to adopt")
    seq, spent = state
    hash_ = _hash_at(ledger_path, seq) if seq else None
    key = SigningKey.load(cfg.signing_key)
    watermark_for(cfg, key).advance(seq, hash_ or "", spent)
    return seq, spent
