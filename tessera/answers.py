"""A node's signed answer statement: what it released, for which request, where it is
audited. Shared by the node (which signs) and the analyst's client (which checks).

The statement is canonical JSON (tessera.canonical, RFC 8785) of:

    {"v": 1, "organisation", "node_key", "request_id", "request_hash",
     "template_digest", "answer_key", "dataset", "dataset_version",
     "payload_sha256", "cost": {kind: value}, "charged": {kind: value},
     "from_cache", "audit_seq", "audit_hash"}

signed with the node's Ed25519 key over `keys.ANSWER + statement`. The payload is the
canonical JSON the node stored in its ledger for the answer key (noisy measures, cost);
its SHA-256 is `payload_sha256`, and the node's audit entry at `audit_seq` records the
same digest, so a released figure can be traced to one audit entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tessera import canonical, keys, results

VERSION = 1
MAX_STATEMENT_BYTES = 16 * 1024
MAX_PAYLOAD_BYTES = 8 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = {
    "v",
    "organisation",
    "node_key",
    "request_id",
    "request_hash",
    "template_digest",
    "answer_key",
    "dataset",
    "dataset_version",
    "payload_sha256",
    "cost",
    "charged",
    "from_cache",
    "audit_seq",
    "audit_hash",
}


class StatementError(ValueError):
    """A statement or payload that is malformed or does not verify."""


@dataclass(frozen=True)
class Statement:
    organisation: str
    node_key: str
    request_id: str
    request_hash: str
    template_digest: str
    answer_key: str
    dataset: str
    dataset_version: int
    payload_sha256: str
    cost_kind: str
    cost: float
    charged: float
    from_cache: bool
    audit_seq: int
    audit_hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "organisation": self.organisation,
            "node_key": self.node_key,
            "request_id": self.request_id,
            "request_hash": self.request_hash,
            "template_digest": self.template_digest,
            "answer_key": self.answer_key,
            "dataset": self.dataset,
            "dataset_version": self.dataset_version,
            "payload_sha256": self.payload_sha256,
            "cost": {self.cost_kind: self.cost},
            "charged": {self.cost_kind: self.charged},
            "from_cache": self.from_cache,
            "audit_seq": self.audit_seq,
            "audit_hash": self.audit_hash,
        }

    def encode(self) -> bytes:
        return canonical.encode(self.to_dict())


@dataclass(frozen=True)
class SignedStatement:
    statement: bytes
    signature: bytes


def payload_digest(payload: bytes) -> str:
    return canonical.sha256_hex(payload)


def sign(statement: Statement, key: keys.SigningKey) -> SignedStatement:
    if key.public.key_id != statement.node_key:
        raise ValueError("the signing key is not the statement's node key")
    body = statement.encode()
    return SignedStatement(body, key.sign(keys.ANSWER, body))


def parse(body: bytes) -> Statement:
    """Parse canonical statement bytes; does not check the signature."""
    try:
        d = canonical.decode(body, max_bytes=MAX_STATEMENT_BYTES)
    except canonical.CanonicalError as e:
        raise StatementError(f"statement: {e}") from None
    if not isinstance(d, dict) or set(d) != _FIELDS:
        raise StatementError("statement: not an object with exactly the answer fields")
    if d["v"] != VERSION:
        raise StatementError("statement: unsupported version")
    for name in ("organisation", "node_key", "request_id", "dataset"):
        if not isinstance(d[name], str):
            raise StatementError(f"statement: {name} must be a string")
    for name in ("request_hash", "template_digest", "answer_key", "payload_sha256", "audit_hash"):
        if not (isinstance(d[name], str) and _HEX64.match(d[name])):
            raise StatementError(f"statement: {name} must be 64 lower-case hex digits")
    for name in ("dataset_version", "audit_seq"):
        if not isinstance(d[name], int) or isinstance(d[name], bool):
            raise StatementError(f"statement: {name} must be an integer")
    if not isinstance(d["from_cache"], bool):
        raise StatementError("statement: from_cache must be true or false")
    cost, charged = _loss(d["cost"], "cost"), _loss(d["charged"], "charged")
    if cost[0] != charged[0]:
        raise StatementError("statement: cost and charged are in different units")
    return Statement(
        d["organisation"],
        d["node_key"],
        d["request_id"],
        d["request_hash"],
        d["template_digest"],
        d["answer_key"],
        d["dataset"],
        d["dataset_version"],
        d["payload_sha256"],
        cost[0],
        cost[1],
        charged[1],
        d["from_cache"],
        d["audit_seq"],
        d["audit_hash"],
    )


def _loss(value: Any, name: str) -> tuple[str, float]:
    if not (isinstance(value, dict) and len(value) == 1):
        raise StatementError(f"statement: {name} must name one loss")
    ((kind, amount),) = value.items()
    if kind not in ("epsilon", "rho") or not isinstance(amount, int | float):
        raise StatementError(f"statement: {name} must be epsilon or rho and a number")
    if isinstance(amount, bool):
        raise StatementError(f"statement: {name} must be a number")
    return kind, float(amount)


def verify(signed: SignedStatement, node_key: str) -> Statement:
    """Parse and check the signature against the key the verifier trusts for the node
    (never the key the statement names about itself)."""
    st = parse(signed.statement)
    if st.node_key != node_key:
        raise StatementError("statement: signed for another node key")
    try:
        public = keys.PublicKey.from_id(node_key)
    except keys.KeyError_ as e:
        raise StatementError(f"trusted key: {e}") from None
    if not public.verify(keys.ANSWER, signed.statement, signed.signature):
        raise StatementError("statement: signature does not verify with the node's key")
    return st


def measures_from_payload(payload: bytes) -> tuple[str, float, dict[str, results.Measure]]:
    """(loss kind, cost, measures) from a node's stored payload."""
    try:
        d = canonical.decode(payload, max_bytes=MAX_PAYLOAD_BYTES)
    except canonical.CanonicalError as e:
        raise StatementError(f"payload: {e}") from None
    try:
        kind, cost = _loss({d["kind"]: d["cost"]}, "payload cost")
        out: dict[str, results.Measure] = {}
        for m in d["measures"]:
            values = tuple(m["values"])
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise StatementError("payload: measure values must be integers")
            # The coordinator's own reading of a payload: the same noise description.
            out[str(m["name"])] = results.measure_from_stored(m, kind)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, StatementError):
            raise
        raise StatementError(f"payload: malformed ({type(e).__name__})") from None
    return kind, cost, out


def loss_dict(kind: str, value: float) -> Mapping[str, float]:
    return {kind: value}
