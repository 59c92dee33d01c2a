"""What the node and the coordinator agree on for one overlap session over gRPC.

A session is `{request_id}/overlap/{attempt}`: a retry is a new session, with fresh
keys, fresh noise and a fresh charge at every node. Its query id (what every
protocol message carries) is derived from the session id and the hash of the
analyst's signed request, so a message of one session or request is refused in any
other. The roles follow from the query alone, so the coordinator cannot choose them:
the noise party is the query's noiser (the category party by default) and the counting
node is the first other party.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from tessera import keys, results
from tessera.overlap.protocol import OverlapQuery

SESSION_ID = re.compile(r"^(?P<request>.+)/overlap/(?P<attempt>[1-9][0-9]{0,5})$")
_QUERY_ID = b"tessera/v1/overlap-query\x00"


def session_id(request_id: str, attempt: int) -> str:
    return f"{request_id}/overlap/{attempt}"


def is_session(session: str) -> bool:
    return SESSION_ID.match(session) is not None


def query_id(session: str, request_hash: str) -> bytes:
    return hashlib.sha256(_QUERY_ID + request_hash.encode() + b"\x00" + session.encode()).digest()


def counter_party(query: OverlapQuery) -> int:
    """The party whose node also hosts the Counter: the first that is not the noise party
    (so the node that knows every dummy count never sees the blinded view)."""
    return next(i for i in range(query.n) if i != query.noiser)


def sign_hello(key: keys.SigningKey, hello: bytes) -> bytes:
    """A hello carries the query id, the party index and the per-query sealing key."""
    return key.sign(keys.OVERLAP_HELLO, hello)


def hello_verifies(node_key: str, hello: bytes, signature: bytes) -> bool:
    try:
        return keys.PublicKey.from_id(node_key).verify(keys.OVERLAP_HELLO, hello, signature)
    except keys.KeyError_:
        return False


def release_cells(payload: dict[str, Any]) -> list[results.Cell]:
    """The analyst's cells from the counting node's signed release payload."""
    return [
        results.Cell(
            (str(c["label"]),),
            float(c["estimate"]),
            float(c["ci95_low"]),
            float(c["ci95_high"]),
            bool(c["suppressed"]),
            float(c["coverage"]),
        )
        for c in payload["cells"]
    ]
