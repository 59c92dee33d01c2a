"""Rotating a node's signing key without breaking its audit chain.

With the node stopped, `tessera node rotate-key --config node.toml --new-key NEW`:

1. checks the audit log verifies under the current key (`signing_key`);
2. appends a handover entry, signed by the current key, naming the new key;
3. appends an acceptance entry signed by the new key (so a handover alone, which
   anyone could write naming someone's public key, never counts);
4. re-signs the rollback watermark with the new key, unchanged otherwise.

Then point `signing_key` at the new key file (or put the new key in its place) and
start the node. `tessera audit verify` accepts the old key or the new one: the
checker follows each handover, and each must be signed by the key before it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from tessera import audit, observability
from tessera.clock import Clock, SystemClock
from tessera.keys import SigningKey
from tessera.node import rollback
from tessera.node.config import NodeConfig
from tessera.startup import StartupError


@dataclass(frozen=True)
class Rotated:
    old_key: str
    new_key: str
    handover_seq: int
    accepted_seq: int


def rotate(cfg: NodeConfig, new_key_path: Path, clock: Clock | None = None) -> Rotated:
    clock = clock or SystemClock()
    _refuse_if_serving(cfg)
    old = SigningKey.load(cfg.signing_key)
    new = SigningKey.load(new_key_path)
    if new.public.key_id == old.public.key_id:
        raise StartupError(f"{new_key_path}: this is the key the node signs with now")
    ledger = cfg.state_dir / "ledger.sqlite"
    if ledger.exists():
        result = audit.verify(ledger, old.public)
        if not result.ok:
            raise StartupError(
                f"{ledger}: the audit log does not verify under signing_key "
                f"({result.problems[0]}); nothing was changed"
            )
        if audit.verify(ledger, new.public).ok:
            raise StartupError(
                f"{ledger}: the audit log is already handed over to {new.public.key_id}\n"
                f"  fix: set signing_key = {new_key_path} in the config and start the node"
            )
        # Read before anything changes: the watermark must verify under the old key.
        try:
            mark = rollback.read_watermark(cfg.watermark_path, cfg.organisation, old.public)
        except rollback.RollbackError as e:
            raise StartupError(f"{e}; nothing was changed") from None
        log = audit.AuditLog.open(ledger, old, clock)
        try:
            handover = log.rotate(new.public)
        finally:
            log.close()
        log = audit.AuditLog.open(ledger, new, clock)
        try:
            accepted = log.append(
                {
                    "actor": "operator",
                    "template_digest": None,
                    "params": None,
                    "mode": None,
                    "cost": None,
                    "outcome": "key_accepted",
                    "message": f"signing key {new.public.key_id} takes over from "
                    f"{old.public.key_id}",
                }
            )
        finally:
            log.close()
        if mark is not None:
            rollback.watermark_for(cfg, new).advance(
                int(mark["audit_seq"]), str(mark["audit_hash"]), dict(mark["lifetime_rho"])
            )
        return Rotated(old.public.key_id, new.public.key_id, handover.seq, accepted.seq)
    return Rotated(old.public.key_id, new.public.key_id, 0, 0)


def _refuse_if_serving(cfg: NodeConfig) -> None:
    """A node still serving would go on signing with the old key after the handover."""
    try:
        host, port = observability.split_address(cfg.listen)
    except ValueError:
        return
    if port == 0:
        return  # a test's node on a random port: the caller stops it
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise StartupError(
                f"{cfg.listen} is in use: stop the node before rotating its key "
                "(a running node would go on signing with the old one)"
            ) from None
