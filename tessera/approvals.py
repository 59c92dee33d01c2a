"""Approver signatures over a template digest, and the k-of-n check a node makes.

Detached signatures live beside the template file as JSON lines
(`<template>.toml.sigs`), one {"approver_key", "signature"} per line.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera import keys


@dataclass(frozen=True)
class Approval:
    approver_key: str
    signature: bytes


class ApprovalRefused(Exception):
    """`code` is the status name: UNAUTHENTICATED for a signature that fails,
    PERMISSION_DENIED for too few trusted approvals."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def sign(digest: str, key: keys.SigningKey) -> Approval:
    return Approval(key.public.key_id, key.sign(keys.TEMPLATE_APPROVAL, bytes.fromhex(digest)))


def check(
    digest: str,
    approvals: Sequence[Approval],
    trusted: Mapping[str, str],
    threshold: int,
    *,
    requester_key: str | None = None,
    requester_name: str | None = None,
    identities: Mapping[str, str] | None = None,
) -> list[str]:
    """Return the names of the distinct trusted approvers whose signatures count.

    `trusted` maps key id to approver name; `identities` maps key id to the person
    (name and organisation), so that several keys of one person count once (without
    it, each key is a person). An approver who is also the
    requesting analyst (same key or same name) does not count. Raises
    ApprovalRefused unless at least `threshold` approvals count.
    """
    message = bytes.fromhex(digest)
    counted: dict[str, str] = {}
    own = 0
    # De-duplicated and capped before any signature is checked (distinct_trusted).
    unknown = len({a.approver_key for a in approvals if a.approver_key not in trusted})
    for a in distinct_trusted(approvals, trusted):
        name = trusted[a.approver_key]
        if not _verifies(a.approver_key, message, a.signature):
            raise ApprovalRefused(
                "UNAUTHENTICATED",
                f"approval by {name} does not verify over this template's digest "
                "(was the template changed after it was signed?)",
            )
        if a.approver_key == requester_key or (
            requester_name is not None and name.casefold() == requester_name.casefold()
        ):
            own += 1
            continue
        # Counted by person: two keys of one approver (key rotation) count once.
        person = identities.get(a.approver_key, a.approver_key) if identities else a.approver_key
        counted[person] = name
    if len(counted) >= threshold:
        return sorted(counted.values())
    if not approvals:
        raise ApprovalRefused("PERMISSION_DENIED", "the template carries no approver signatures")
    detail = f"the template has {len(counted)} of the {threshold} approvals this node requires"
    if unknown:
        detail += f"; {unknown} signature(s) are by approvers this node does not trust"
    if own:
        detail += "; the requesting analyst's own approval does not count"
    raise ApprovalRefused("PERMISSION_DENIED", detail)


# Approvals verified good, by (approver key, digest, signature): the same signed template
# comes with every request. Ed25519 verification is deterministic, so a hit says what
# verifying again would; only successes are kept (a bad signature is checked afresh
# every time and never enters), and `check` applies the trust list before looking here,
# so a key dropped from the trust list stops counting at once.
VERIFIED_CACHE_SIZE = 4096
_verified: OrderedDict[tuple[str, bytes, bytes], None] = OrderedDict()
_verified_lock = threading.Lock()


def _verifies(key_id: str, message: bytes, signature: bytes) -> bool:
    entry = (key_id, message, bytes(signature))
    with _verified_lock:
        if entry in _verified:
            _verified.move_to_end(entry)
            return True
    if not keys.PublicKey.from_id(key_id).verify(keys.TEMPLATE_APPROVAL, message, signature):
        return False
    with _verified_lock:
        _verified[entry] = None
        while len(_verified) > VERIFIED_CACHE_SIZE:
            _verified.popitem(last=False)
    return True


def forget_verified() -> None:
    """Empty the cache of verified approvals (tests that count signature checks)."""
    with _verified_lock:
        _verified.clear()


def distinct_trusted(approvals: Sequence[Approval], trusted: Mapping[str, str]) -> list[Approval]:
    """The approvals worth verifying, found without checking any signature: the first
    approval by each trusted key, and nothing by any other key. So a request costs at
    most len(trusted) signature checks, however many copies or strangers it carries
    (the rest is one set lookup per approval, bounded by the message size)."""
    seen: set[str] = set()
    known: list[Approval] = []
    for a in approvals:
        if a.approver_key in seen or a.approver_key not in trusted:
            continue
        seen.add(a.approver_key)
        known.append(a)
        if len(known) == len(trusted):
            break
    return known


def sigs_path(template_path: Path) -> Path:
    return template_path.with_name(template_path.name + ".sigs")


def save(path: Path, approvals: Iterable[Approval]) -> None:
    lines = [
        json.dumps(
            {"approver_key": a.approver_key, "signature": base64.b64encode(a.signature).decode()}
        )
        for a in approvals
    ]
    path.write_text("".join(line + "\n" for line in lines))


def load(path: Path) -> list[Approval]:
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(Approval(str(d["approver_key"]), base64.b64decode(d["signature"])))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}: line {n} is not an approval") from None
    return out


def add(existing: Sequence[Approval], new: Approval) -> list[Approval]:
    """Add or replace one approver's signature."""
    return [a for a in existing if a.approver_key != new.approver_key] + [new]
