"""Handing an audit log over to a new signing key (node or coordinator), so the chain
stays whole: a handover entry signed by the current key names the new key, then an
acceptance entry signed by the new key. `audit.verify` follows the handover, and
counts it only once the new key has signed after it."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from tessera import audit, observability
from tessera.clock import Clock
from tessera.keys import SigningKey
from tessera.startup import StartupError


@dataclass(frozen=True)
class Rotated:
    old_key: str
    new_key: str
    handover_seq: int
    accepted_seq: int


def check_ready(db: Path, old: SigningKey, new: SigningKey, new_key_path: Path) -> None:
    """Refuse a rotation that would not leave a verifiable log."""
    if new.public.key_id == old.public.key_id:
        raise StartupError(f"{new_key_path}: this is the key that signs now")
    if audit.verify(db, new.public).ok:
        raise StartupError(
            f"{db}: the audit log is already handed over to {new.public.key_id}\n"
            f"  fix: set signing_key = {new_key_path} in the config and start the server"
        )
    result = audit.verify(db, old.public)
    if not result.ok:
        raise StartupError(
            f"{db}: the audit log does not verify under signing_key "
            f"({result.problems[0]}); nothing was changed"
        )


def hand_over(db: Path, old: SigningKey, new: SigningKey, clock: Clock) -> Rotated:
    with audit.AuditLog.open(db, old, clock) as log:
        handover = log.rotate(new.public)
    with audit.AuditLog.open(db, new, clock) as log:
        accepted = log.append(
            {
                "actor": "operator",
                "template_digest": None,
                "params": None,
                "mode": None,
                "cost": None,
                "outcome": "key_accepted",
                "message": f"signing key {new.public.key_id} takes over from {old.public.key_id}",
            }
        )
    return Rotated(old.public.key_id, new.public.key_id, handover.seq, accepted.seq)


def refuse_if_serving(listen: str, what: str) -> None:
    """A server still running would go on signing with the old key after the handover."""
    try:
        host, port = observability.split_address(listen)
    except ValueError:
        return
    if port == 0:
        return  # a random port (tests): the caller stops its server
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise StartupError(
                f"{listen} is in use: stop the {what} before rotating its key "
                "(a running one would go on signing with the old key)"
            ) from None
