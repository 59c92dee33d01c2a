"""The coordinator's side of an overlap count: open one session at every named
dataset's node, relay the protocol's messages between them, collect the signed release.

The coordinator only relays. Blinded sets are unreadable without every party's key,
sealed messages open only at their recipient, each node signs its hello so the
coordinator cannot swap a sealing key, and the count is made and signed by the
counting node (tessera.overlap.session.counter_party), so a relay that alters it is
caught by the analyst's verification. Every step has a deadline: a node that fails,
refuses or is too slow ends the session with its reason and nothing is released.
Message contents are never logged.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

from tessera import requests, results
from tessera.coordinator.fanout import FanOut, Target
from tessera.coordinator.model import OK, Loss, NodeReport, QueryResult, SignedPart
from tessera.overlap import session as osession
from tessera.overlap.protocol import COUNTER
from tessera.overlap.spec import categories, overlap_query
from tessera.templates.model import Mode, Template
from tessera.wire.v1 import common_pb2, node_pb2
from tessera.wire.v1 import overlap_pb2 as pb

DEFAULT_STEP_DEADLINE_MS = 60_000
MAX_BATCH_BYTES = 3 << 20  # per DELIVER call, well inside the nodes' message limit


class _Failed(Exception):
    def __init__(self, organisation: str, reason: str) -> None:
        super().__init__(reason)
        self.organisation = organisation


@dataclass
class OverlapOutcome:
    session_id: str
    release: bytes | None = None
    counter: str = ""
    aborted: str = ""
    reasons: dict[str, str] = field(default_factory=dict)
    # organisation -> (statement, signature): START's, then the counter's release one
    statements: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    latency_ms: float = 0.0
    # (recipient, message): every protocol message a node received through the relay
    # and every reply the coordinator received ("coordinator"), for tests of the views.
    received: list[tuple[str, bytes]] = field(default_factory=list)


def counter_index(template: Template) -> int:
    """The counting node's party index, from the template alone."""
    return osession.counter_party(overlap_query(template, _any_values(template), bytes(32)))


def _any_values(template: Template) -> dict[str, Any]:
    return {p.name: None for p in template.parameters}


async def run(
    stubs: Sequence[tuple[str, Any]],
    *,
    signed_template: common_pb2.SignedTemplate,
    signed: requests.SignedRequest,
    request_id: str,
    counter: int,
    attempt: int = 1,
    step_deadline_ms: int = DEFAULT_STEP_DEADLINE_MS,
    record: bool = False,
    relay: Callable[[int, bytes], bytes] | None = None,
    on_hellos: Callable[[list[pb.OverlapSignedHello]], list[pb.OverlapSignedHello]] | None = None,
) -> OverlapOutcome:
    """`stubs`: (organisation, NodeService stub) in the audience's (party) order.
    `relay` and `on_hellos` let tests act as a dishonest relay that changes messages."""
    start = time.monotonic()
    sid = osession.session_id(request_id, attempt)
    out = OverlapOutcome(sid, counter=stubs[counter][0])
    wire_request = common_pb2.SignedRequest(canonical=signed.body, signature=signed.signature)
    timeout = step_deadline_ms / 1000

    async def call(i: int, msg: pb.OverlapRound) -> pb.OverlapRound:
        org, stub = stubs[i]
        first = msg.action == pb.OVERLAP_ACTION_OPEN
        req = node_pb2.ProtocolRoundRequest(
            session_id=sid,
            payload=msg.SerializeToString(),
            template=signed_template if first else None,
            request=wire_request if first else None,
        )
        step = pb.OverlapAction.Name(msg.action).removeprefix("OVERLAP_ACTION_").lower()
        if record:
            out.received += [(org, r.message) for r in msg.messages]
            out.received += [(org, h.hello) for h in msg.hellos]
        try:
            reply = await stub.ProtocolRound(req, timeout=timeout)
        except aio.AioRpcError as e:
            code = e.code()
            name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise _Failed(org, f"{step}: {name}: {(e.details() or '')[:300]}") from None
        try:
            answer = pb.OverlapRound.FromString(reply.payload)
            while answer.more:  # the node pages its messages within the message limit
                more = node_pb2.ProtocolRoundRequest(
                    session_id=sid,
                    payload=pb.OverlapRound(action=pb.OVERLAP_ACTION_PULL).SerializeToString(),
                )
                page = pb.OverlapRound.FromString(
                    (await stub.ProtocolRound(more, timeout=timeout)).payload
                )
                answer.messages.extend(page.messages)
                answer.more = page.more
        except aio.AioRpcError as e:
            code = e.code()
            name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise _Failed(org, f"{step}: {name}: {(e.details() or '')[:300]}") from None
        except Exception:
            raise _Failed(org, f"{step}: the node answered with no overlap message") from None
        if record:
            out.received += [("coordinator", r.message) for r in answer.messages]
        if reply.statement:
            out.statements[org] = (bytes(reply.statement), bytes(reply.statement_signature))
        return answer

    async def everyone(msgs: dict[int, pb.OverlapRound]) -> dict[int, pb.OverlapRound]:
        got = await asyncio.gather(*(call(i, m) for i, m in msgs.items()), return_exceptions=True)
        failed = [g for g in got if isinstance(g, BaseException)]
        for g in failed:
            if isinstance(g, _Failed):
                out.reasons.setdefault(g.organisation, str(g))
        if failed:
            first = failed[0]
            raise first if isinstance(first, _Failed) else _Failed("", type(first).__name__)
        return {i: g for i, g in zip(msgs, got, strict=True) if isinstance(g, pb.OverlapRound)}

    async def deliver(pending: list[pb.OverlapRouted]) -> None:
        while pending:
            batches: dict[int, list[list[pb.OverlapRouted]]] = {}
            for r in pending:
                node = counter if r.to == COUNTER else r.to
                if not 0 <= node < len(stubs):
                    raise _Failed(stubs[0][0], "a message for no party of the session")
                if relay is not None:
                    r = pb.OverlapRouted(to=r.to, message=relay(r.to, r.message))
                lists = batches.setdefault(node, [[]])
                size = sum(len(x.message) for x in lists[-1])
                if lists[-1] and size + len(r.message) > MAX_BATCH_BYTES:
                    lists.append([])
                lists[-1].append(r)
            pending = []
            # One call per node at a time keeps each party's messages in order.
            for k in range(max(len(v) for v in batches.values())):
                wave = {
                    i: pb.OverlapRound(action=pb.OVERLAP_ACTION_DELIVER, messages=v[k])
                    for i, v in batches.items()
                    if k < len(v)
                }
                for reply in (await everyone(wave)).values():
                    pending += list(reply.messages)

    n = range(len(stubs))
    try:
        opened = await everyone({i: pb.OverlapRound(action=pb.OVERLAP_ACTION_OPEN) for i in n})
        hellos = [h for i in n for h in opened[i].hellos]
        if on_hellos is not None:
            hellos = on_hellos(hellos)
        greeted = await everyone(
            {i: pb.OverlapRound(action=pb.OVERLAP_ACTION_HELLOS, hellos=hellos) for i in n}
        )
        await deliver([m for i in n for m in greeted[i].messages])
        started = await everyone({i: pb.OverlapRound(action=pb.OVERLAP_ACTION_START) for i in n})
        await deliver([m for i in n for m in started[i].messages])
        done = await everyone({counter: pb.OverlapRound(action=pb.OVERLAP_ACTION_RESULT)})
        out.release = bytes(done[counter].release)
    except _Failed as e:
        out.aborted = str(e) or "a node failed"
        out.release = None
    # Every node forgets the session (best effort: a node that is down has already).
    await asyncio.gather(
        *(call(i, pb.OverlapRound(action=pb.OVERLAP_ACTION_CLOSE)) for i in n),
        return_exceptions=True,
    )
    out.latency_ms = round((time.monotonic() - start) * 1000, 3)
    return out


def release(
    template: Template, digest: str, request: requests.QueryRequest, out: OverlapOutcome
) -> QueryResult:
    """The analyst's result: the counting node's signed cells, every node's statement."""
    audience = list(request.audience)
    released = out.release is not None and not out.aborted
    cells: tuple[results.Cell, ...] = ()
    labels: tuple[str, ...] = ()
    notes: list[str] = []
    reason = ""
    if released and out.release is not None:
        payload = json.loads(out.release)
        cells = tuple(osession.release_cells(payload))
        labels = tuple(c.labels[0] for c in cells)
        names = categories(template)
        for org, figures in payload["not_linkable"].items():
            if len(figures) == 1:
                shown = str(figures[0])
            else:
                shown = ", ".join(f"{n} {x}" for n, x in zip(names, figures, strict=False))
            notes.append(
                f"{org}: children without a valid NHS number (not linkable, noisy): {shown}"
            )
    else:
        why = "; ".join(f"{o} ({r})" for o, r in sorted(out.reasons.items()))
        reason = f"nothing released: {out.aborted}" + (f"; {why}" if why else "")
    reports = [
        NodeReport(
            org,
            OK if released else "ABORTED",
            "" if released else out.reasons.get(org, ""),
            released,
            out.latency_ms,
        )
        for org in audience
    ]
    parts: list[SignedPart] = []
    spent = 0.0
    if released:
        for org in audience:
            body, sig = out.statements[org]
            payload_bytes = (out.release or b"") if org == out.counter else b""
            parts.append(SignedPart(org, body, sig, payload_bytes))
            spent = max(spent, float(json.loads(body)["cost"]["epsilon"]))
    name = " × ".join(d.name for d in template.group_by) or "cell"
    return QueryResult(
        query_id=request.request_id,
        template_digest=digest,
        template_id=template.id,
        mode=Mode.OVERLAP,
        released=released,
        withheld_reason=reason,
        statistic="overlap_count",
        dimensions=((name, labels),) if released else (),
        cells=cells,
        nodes=tuple(reports),
        privacy_spent=Loss("epsilon", spent),
        parts=tuple(parts),
        notes=tuple(notes),
    )


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
    """One overlap query: quorum is every named dataset's node. A node never rejoins a
    session id, so a query run again moves on to the next attempt (a fresh charge)."""
    if unrouted:
        out = OverlapOutcome(osession.session_id(request.request_id, 1))
        out.aborted = "an overlap needs the node of every named dataset"
        out.reasons = dict.fromkeys(unrouted, "not routed: no such node hosting the dataset")
        return release(template, digest, request, out)
    by_org = {t.organisation: t for t in targets}
    ordered = [by_org[o] for o in request.audience]
    counter = counter_index(template)
    deadline_ms = max(1000, int(deadline_seconds * 1000))
    for attempt in range(1, max_attempts + 1):

        async def go(stub: Callable[[Target], Any], attempt: int = attempt) -> OverlapOutcome:
            return await run(
                [(t.organisation, stub(t)) for t in ordered],
                signed_template=signed_template,
                signed=signed,
                request_id=request.request_id,
                counter=counter,
                attempt=attempt,
                step_deadline_ms=deadline_ms,
            )

        out = fanout.run_with_stubs(go, timeout=deadline_seconds * 12 + 30)
        if not (out.aborted and "already joined" in out.aborted):
            break
    return release(template, digest, request, out)
