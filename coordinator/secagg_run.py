"""The coordinator's side of secure aggregation: drive one session over the nodes'
ProtocolRound and keep only the SecAggServer object (masked vectors, shares).

The session id is `{request_id}/secagg/{attempt}`; the roster is the request's
audience in sorted order (index 1..n), each with the node key the coordinator's
Describe learnt (a node refuses a roster that does not place its own key at its
index). The first message to each node carries the signed template and request, so
the node authorises the session exactly as it would an Execute. The result is the
sum only, with the nodes that contributed, dropped (masks removed) or were excluded,
each with its reason, and the contributors' signed statements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

from tessera import requests
from tessera.secagg.protocol import Aborted, IntVector, Refused, SecAggServer
from tessera.secagg.roles import Failure, run_session
from tessera.wire.v1 import common_pb2, node_pb2
from tessera.wire.v1 import secagg_pb2 as pb

DEFAULT_STAGE_DEADLINE_MS = 20_000


def session_id(request_id: str, attempt: int) -> str:
    return f"{request_id}/secagg/{attempt}"


@dataclass(frozen=True)
class Member:
    organisation: str
    node_key_id: str
    stub: Any  # a grpc.aio NodeServiceStub


@dataclass
class SecAggOutcome:
    session_id: str
    total: IntVector | None
    contributors: tuple[str, ...]
    dropped: tuple[str, ...]
    excluded: tuple[str, ...]
    # organisation -> why it was left out (or, with no total, why nothing was released)
    reasons: dict[str, str] = field(default_factory=dict)
    aborted: str = ""
    # organisation -> (statement, signature), from the masked-input stage
    statements: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    # Every message the coordinator received (for tests of its view).
    received: list[tuple[str, bytes]] = field(default_factory=list)


async def run(
    members: Sequence[Member],
    *,
    signed_template: common_pb2.SignedTemplate,
    signed: requests.SignedRequest,
    request_id: str,
    threshold: int,
    vector_length: int,
    attempt: int = 1,
    stage_deadline_ms: int = DEFAULT_STAGE_DEADLINE_MS,
    record: bool = False,
    on_reply: Callable[[str, pb.SecAggMessage], None] | None = None,
) -> SecAggOutcome:
    roster = sorted(members, key=lambda m: m.organisation)
    by_index = {i: m for i, m in enumerate(roster, start=1)}
    sid = session_id(request_id, attempt)
    session = pb.SecAggSession(
        session_id=sid,
        threshold=threshold,
        vector_length=vector_length,
        participants=[
            pb.SecAggParticipant(index=i, node_key_id=m.node_key_id) for i, m in by_index.items()
        ],
        stage_deadline_ms=stage_deadline_ms,
    )
    wire_request = common_pb2.SignedRequest(canonical=signed.body, signature=signed.signature)
    out = SecAggOutcome(sid, None, (), (), ())

    async def call(index: int, msg: pb.SecAggMessage) -> pb.SecAggMessage:
        m = by_index[index]
        first = msg.WhichOneof("body") == "session"
        req = node_pb2.ProtocolRoundRequest(
            session_id=sid,
            payload=msg.SerializeToString(),
            template=signed_template if first else None,
            request=wire_request if first else None,
        )
        try:
            reply = await m.stub.ProtocolRound(req, timeout=stage_deadline_ms / 1000)
        except aio.AioRpcError as e:
            code = e.code()
            name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise Refused(f"{name}: {(e.details() or '')[:300]}") from None
        if record:
            out.received.append((m.organisation, bytes(reply.payload)))
        if reply.statement:
            out.statements[m.organisation] = (
                bytes(reply.statement),
                bytes(reply.statement_signature),
            )
        answer = pb.SecAggMessage.FromString(reply.payload)
        if on_reply is not None:
            on_reply(m.organisation, answer)
        return answer

    server = SecAggServer(session)
    failures: list[Failure] = []
    try:
        result = await run_session(session, call, server=server, failures=failures)
    except (Aborted, Refused) as e:
        out.aborted = str(e)
    for f in failures:
        out.reasons.setdefault(by_index[f.node].organisation, f"{f.stage.value}: {f.reason}")
    if out.aborted:
        out.statements.clear()  # nothing was released: no answer to speak for
        out.excluded = tuple(m.organisation for m in roster)
        return out

    def names(ix: Sequence[int]) -> tuple[str, ...]:
        return tuple(by_index[i].organisation for i in ix)

    out.total = result.total
    out.contributors = names(result.contributors)
    out.dropped = names(result.dropped)
    out.excluded = names(result.excluded)
    out.statements = {o: s for o, s in out.statements.items() if o in out.contributors}
    return out


def members_from(
    stubs: Mapping[str, Any], key_ids: Mapping[str, str]
) -> list[Member]:
    return [Member(org, key_ids[org], stubs[org]) for org in sorted(stubs)]


__all__ = [
    "DEFAULT_STAGE_DEADLINE_MS",
    "Member",
    "SecAggOutcome",
    "members_from",
    "run",
    "session_id",
]
