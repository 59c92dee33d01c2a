"""The coordinator's side of secure aggregation: drive one session over the nodes'
ProtocolRound and keep only the SecAggServer object (masked vectors, shares).

The session id is `{request_id}/secagg/{attempt}`; the roster is the request's
audience in sorted order (index 1..n), each with the node key the coordinator's
Describe learnt (a node refuses a roster that does not place its own key at its
index, or whose keys differ from the federation roster its approvers signed: the
coordinator is not trusted for keys). The first message to each node carries the
signed template and request, so the node authorises the session exactly as it would
an Execute. The result is the
sum only, with the nodes that contributed, dropped (masks removed) or were excluded,
each with its reason, and the contributors' signed statements.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

from tessera import requests, results
from tessera.coordinator.fanout import FanOut, Target
from tessera.coordinator.model import OK, Loss, NodeReport, QueryResult, SignedPart
from tessera.intervals import NoisePart
from tessera.secagg.protocol import Aborted, IntVector, Refused, SecAggServer
from tessera.secagg.roles import Failure, run_session
from tessera.templates.model import Mode, Template, measure_sensitivities
from tessera.wire.v1 import common_pb2, node_pb2
from tessera.wire.v1 import secagg_pb2 as pb

DEFAULT_STAGE_DEADLINE_MS = 20_000


def session_id(request_id: str, attempt: int) -> str:
    return f"{request_id}/secagg/{attempt}"


def vector_length(template: Template) -> int:
    """Cells in the summed vector: every measure's cells, concatenated in the
    template's measure order (the order the node's calibration gives)."""
    return template.n_cells * len(measure_sensitivities(template.statistic))


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
    # organisation -> its noise share's scale per measure (public figures)
    noise_scales: dict[str, tuple[float, ...]] = field(default_factory=dict)
    latency_ms: float = 0.0
    # organisation -> the node key the session's roster gave it
    node_keys: dict[str, str] = field(default_factory=dict)
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
    start = time.monotonic()
    roster = sorted(members, key=lambda m: m.organisation)
    unknown = [m for m in roster if not m.node_key_id]
    if unknown:
        # The node keys, from each node itself; a node refuses a roster that does not
        # name its own key at its index, so a wrong key only excludes that node.
        keyed = await asyncio.gather(
            *(
                m.stub.Describe(
                    node_pb2.DescribeRequest(identity_only=True),
                    timeout=stage_deadline_ms / 1000,
                )
                for m in unknown
            ),
            return_exceptions=True,
        )
        found = {
            m.organisation: r.node_key
            for m, r in zip(unknown, keyed, strict=True)
            if not isinstance(r, BaseException)
        }
        roster = [
            m if m.node_key_id else Member(m.organisation, found.get(m.organisation, ""), m.stub)
            for m in roster
        ]
        missing = [m.organisation for m in roster if not m.node_key_id]
        if missing:
            out0 = SecAggOutcome(session_id(request_id, attempt), None, (), (), ())
            out0.aborted = "could not learn the node key of " + ", ".join(missing)
            out0.excluded = tuple(m.organisation for m in roster)
            out0.reasons = dict.fromkeys(missing, "advertise: the node did not describe itself")
            return out0
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
    out.node_keys = {m.organisation: m.node_key_id for m in roster}

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
            reason = f"{name}: {(e.details() or '')[:300]}"
            out.reasons.setdefault(m.organisation, f"{msg.WhichOneof('body')}: {reason}")
            raise Refused(reason) from None
        if record:
            out.received.append((m.organisation, bytes(reply.payload)))
        if reply.noise_scales:
            out.noise_scales[m.organisation] = tuple(reply.noise_scales)
        if reply.statement:
            out.statements[m.organisation] = (
                bytes(reply.statement),
                bytes(reply.statement_signature),
            )
        answer = pb.SecAggMessage.FromString(reply.payload)
        if on_reply is not None:
            on_reply(m.organisation, answer)
        return answer

    try:
        server = SecAggServer(session)
    except Refused as e:  # e.g. two nodes described themselves with the same key
        out.aborted = f"the session's roster was refused: {e}"
        out.excluded = tuple(m.organisation for m in roster)
        out.reasons = {m.organisation: f"session: {e}" for m in roster}
        out.latency_ms = round((time.monotonic() - start) * 1000, 3)
        return out
    failures: list[Failure] = []
    try:
        result = await run_session(session, call, server=server, failures=failures)
    except (Aborted, Refused) as e:
        out.aborted = str(e)
    for f in failures:
        out.reasons.setdefault(by_index[f.node].organisation, f"{f.stage.value}: {f.reason}")
    out.latency_ms = round((time.monotonic() - start) * 1000, 3)
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


def release(
    template: Template,
    digest: str,
    query_id: str,
    audience: Sequence[str],
    out: SecAggOutcome,
) -> QueryResult:
    """The analyst's result: the sum post-processed once (tessera.results), every node
    asked with its part, and the contributors' signed statements."""
    names = list(measure_sensitivities(template.statistic))
    contributors = set(out.contributors)
    released = out.total is not None and len(contributors) >= template.access.quorum
    cells: tuple[results.Cell, ...] = ()
    reason = ""
    if released and out.total is not None:
        n = template.n_cells
        measures = {}
        for k, name in enumerate(names):
            parts = [
                NoisePart(results.mechanism("rho"), out.noise_scales[o][k])
                for o in sorted(contributors)
                if o in out.noise_scales and out.noise_scales[o][k] > 0
            ]
            values = [int(v) for v in out.total[k * n : (k + 1) * n]]
            variance = math.fsum(p.scale**2 for p in parts)
            measures[name] = results.measure_from_noise(name, values, variance, parts)
        cells = tuple(results.release(template, measures))
    else:
        why = "; ".join(f"{o} ({r})" for o, r in sorted(out.reasons.items()))
        reason = f"nothing released: {out.aborted or 'fewer contributors than the quorum'}"
        reason += f"; {why}" if why else ""
    reports = []
    for org in sorted(set(audience)):
        ok = released and org in contributors
        message = out.reasons.get(org, "")
        if org in out.dropped:
            message = message or "dropped after sharing keys; its masks were removed"
        reports.append(NodeReport(org, OK if ok else "ABORTED", message, ok, out.latency_ms))
    spent = 0.0
    parts_out = []
    for org in sorted(out.statements):
        body, sig = out.statements[org]
        parts_out.append(SignedPart(org, body, sig))
        try:
            spent = max(spent, float(json.loads(body)["cost"]["rho"]))
        except (ValueError, KeyError, TypeError):
            pass
    return QueryResult(
        query_id=query_id,
        template_digest=digest,
        template_id=template.id,
        mode=Mode.SECURE_AGGREGATION,
        released=released,
        withheld_reason=reason,
        statistic=template.statistic.kind.value,
        dimensions=tuple((d.name, d.labels) for d in template.group_by),
        cells=cells,
        nodes=tuple(reports),
        privacy_spent=Loss("rho", spent if released else 0.0),
        parts=tuple(parts_out) if released else (),
    )


def members_from(stubs: Mapping[str, Any], key_ids: Mapping[str, str]) -> list[Member]:
    return [Member(org, key_ids[org], stubs[org]) for org in sorted(stubs)]


__all__ = [
    "DEFAULT_STAGE_DEADLINE_MS",
    "Member",
    "SecAggOutcome",
    "members_from",
    "run",
    "session_id",
]


def run_for_query(
    fanout: FanOut,
    targets: Sequence[Target],
    unrouted: Sequence[str],
    *,
    signed_template: common_pb2.SignedTemplate,
    signed: requests.SignedRequest,
    request: requests.QueryRequest,
    template: Template,
    digest: str,
    deadline_seconds: float,
    max_attempts: int = 8,
) -> QueryResult:
    """One secure-aggregation query: a session over every routed node of the audience.
    A node never rejoins a session id, so a query run again (after a coordinator
    restart) moves on to the next attempt: fresh noise, paid afresh."""
    if unrouted:
        out = SecAggOutcome(session_id(request.request_id, 1), None, (), (), ())
        out.aborted = "secure aggregation needs every node of the audience at the start"
        out.reasons = dict.fromkeys(unrouted, "not routed: no such node hosting the dataset")
        return release(template, digest, request.request_id, request.audience, out)
    deadline_ms = max(1000, int(deadline_seconds * 1000))
    # Node keys learnt at earlier sessions (a Describe round saved); a node that has
    # rotated its key refuses a roster with the old one, and so does every node that
    # checks it against the federation roster: then the keys are asked for again.
    known = fanout.node_keys
    for attempt in range(1, max_attempts + 1):
        cached = {t.organisation: known.get(t.organisation, "") for t in targets}

        async def go(
            stub: Callable[[Target], Any], attempt: int = attempt, cached: dict[str, str] = cached
        ) -> SecAggOutcome:
            members = [Member(t.organisation, cached[t.organisation], stub(t)) for t in targets]
            return await run(
                members,
                signed_template=signed_template,
                signed=signed,
                request_id=request.request_id,
                threshold=template.access.threshold,
                vector_length=vector_length(template),
                attempt=attempt,
                stage_deadline_ms=deadline_ms,
            )

        out = fanout.run_with_stubs(go, timeout=deadline_seconds * 8 + 30)
        refused_at_start = {o for o, r in out.reasons.items() if r.startswith("session:")}
        if out.aborted and refused_at_start and any(cached.values()):
            for org in out.node_keys:  # perhaps a stale key: learn every key afresh
                known.pop(org, None)
            continue
        for org, key in out.node_keys.items():
            if org in refused_at_start:
                known.pop(org, None)
            elif key:
                known[org] = key
        rejoined = out.aborted and all("already joined" in r for r in out.reasons.values())
        if not (rejoined and out.reasons):
            break
    return release(template, digest, request.request_id, request.audience, out)
