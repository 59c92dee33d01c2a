"""The federation roster: which node keys speak for which organisation, signed by k of
the n approvers, so an analyst who holds only the approvers' keys can trust node keys
without trusting the coordinator.

A roster file is JSON:

    {"roster": {"v": 1, "federation": str, "issued_at": time,
                "nodes": [{"organisation", "node_key", "identity"}, ...]},
     "approvals": [{"approver_key": key id, "signature": base64}, ...]}

The roster digest is hex SHA-256("tessera/v1/roster\\0" || canonical(roster)); each
approval signs "tessera/v1/roster-approval\\0" || the digest's 32 raw bytes. Approvals
are de-duplicated and capped at the trusted approvers before any is verified.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tessera import approvals, canonical, keys
from tessera.clock import isoformat

ROSTER_DIGEST = b"tessera/v1/roster\x00"
ROSTER_APPROVAL = b"tessera/v1/roster-approval\x00"


class RosterError(ValueError):
    """A roster that is malformed, or not signed by enough trusted approvers."""


@dataclass(frozen=True)
class Entry:
    organisation: str
    node_key: str
    identity: str


def make(federation: str, entries: Sequence[Entry], issued_at: datetime) -> dict[str, Any]:
    orgs = [e.organisation for e in entries]
    if len(set(orgs)) != len(orgs):
        raise RosterError("an organisation is listed twice")
    for e in entries:
        keys.PublicKey.from_id(e.node_key)
    return {
        "v": 1,
        "federation": federation,
        "issued_at": isoformat(issued_at),
        "nodes": [
            {"identity": e.identity, "node_key": e.node_key, "organisation": e.organisation}
            for e in sorted(entries, key=lambda e: e.organisation)
        ],
    }


def digest(roster: Mapping[str, Any]) -> str:
    try:
        return canonical.sha256_hex(ROSTER_DIGEST + canonical.encode(dict(roster)))
    except canonical.CanonicalError as e:
        raise RosterError(f"roster: {e}") from None


def sign(roster: Mapping[str, Any], key: keys.SigningKey) -> approvals.Approval:
    return approvals.Approval(
        key.public.key_id, key.sign(ROSTER_APPROVAL, bytes.fromhex(digest(roster)))
    )


def save(path: Path, roster: Mapping[str, Any], signed: Sequence[approvals.Approval]) -> None:
    doc = {
        "roster": dict(roster),
        "approvals": [
            {"approver_key": a.approver_key, "signature": base64.b64encode(a.signature).decode()}
            for a in signed
        ],
    }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load(path: Path) -> tuple[dict[str, Any], list[approvals.Approval]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        roster, sent = doc["roster"], doc.get("approvals", [])
        signed = [
            approvals.Approval(str(a["approver_key"]), base64.b64decode(a["signature"]))
            for a in sent
        ]
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as e:
        raise RosterError(f"cannot read roster {path}: {type(e).__name__}") from None
    if not isinstance(roster, dict):
        raise RosterError(f"{path}: the roster must be an object")
    return roster, signed


def add(path: Path, key: keys.SigningKey) -> None:
    """Add (or replace) one approver's signature on a roster file."""
    roster, signed = load(path)
    save(path, roster, approvals.add(signed, sign(roster, key)))


def verify(
    roster: Mapping[str, Any],
    signed: Sequence[approvals.Approval],
    trusted_approvers: Sequence[str],
    threshold: int,
    identities: Mapping[str, str] | None = None,
) -> dict[str, Entry]:
    """The roster's entries by organisation, if at least `threshold` distinct trusted
    approvers signed it; otherwise RosterError. `identities` (key id to person, as
    ApproversConfig.identities gives) counts two keys of one person once."""
    if threshold < 1:
        raise RosterError("the threshold must be at least 1")
    message = bytes.fromhex(digest(roster))
    trusted = {k: k for k in trusted_approvers}
    people: set[str] = set()
    for a in approvals.distinct_trusted(signed, trusted):
        if not keys.PublicKey.from_id(a.approver_key).verify(ROSTER_APPROVAL, message, a.signature):
            raise RosterError(
                f"the roster approval by {a.approver_key[:20]}... does not verify "
                "(was the roster changed after it was signed?)"
            )
        people.add(identities.get(a.approver_key, a.approver_key) if identities else a.approver_key)
    good = len(people)
    if good < threshold:
        raise RosterError(
            f"the roster has {good} of the {threshold} trusted approver signatures required"
        )
    if roster.get("v") != 1 or not isinstance(roster.get("nodes"), list):
        raise RosterError("the roster is not a version 1 roster")
    out: dict[str, Entry] = {}
    for n in roster["nodes"]:
        try:
            e = Entry(str(n["organisation"]), str(n["node_key"]), str(n["identity"]))
            keys.PublicKey.from_id(e.node_key)
        except (KeyError, TypeError, keys.KeyError_):
            raise RosterError("a roster entry is malformed") from None
        if e.organisation in out:
            raise RosterError(f"the roster lists {e.organisation!r} twice")
        out[e.organisation] = e
    return out
