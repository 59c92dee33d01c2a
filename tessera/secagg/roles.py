"""The two edges integration plugs into: a node's session table and the coordinator's
stage driver. Transport-neutral: the node handles one SecAggMessage and returns the
reply (its ProtocolRound handler); the coordinator awaits one call per node per stage.

- `NodeSessions.handle` joins a session once per session id (never again, even after
  it ends, so no noisy vector is ever masked twice), finds its own index by its
  identity key, and asks `vector_for(session)` for its noisy vector only when the
  masked-input stage comes: the node pays its ledger inside that callback, before
  anything derived from the vector leaves it.
- `run_session` gives each stage `stage_deadline_ms`; a node that has not answered by
  then, answers with the wrong message, or is refused, is left out from then on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tessera import keys
from tessera.secagg.protocol import (
    IntVector,
    Refused,
    SecAggClient,
    SecAggResult,
    SecAggServer,
    Stage,
    validate_session,
)
from tessera.wire.v1 import secagg_pb2 as pb

MAX_OPEN_SESSIONS = 64


@dataclass
class _Open:
    client: SecAggClient
    session: pb.SecAggSession
    started: float


class NodeSessions:
    """A node's secure-aggregation sessions (the state behind its ProtocolRound)."""

    def __init__(
        self,
        identity: keys.SigningKey,
        vector_for: Callable[[pb.SecAggSession], IntVector],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._identity = identity
        self._vector_for = vector_for
        self._clock = clock
        self._open: dict[bytes, _Open] = {}  # by context
        self._seen: set[str] = set()  # every session id ever joined

    def _expire(self) -> None:
        now = self._clock()
        for context, o in list(self._open.items()):
            lifetime = 6 * o.session.stage_deadline_ms / 1000
            if o.client.stage in (Stage.DONE, Stage.ABORTED) or now - o.started > lifetime:
                del self._open[context]  # its secrets go with it

    def open_session_ids(self) -> set[str]:
        """The ids of the sessions still open (not done, aborted or expired)."""
        self._expire()
        return {o.session.session_id for o in self._open.values()}

    def handle(self, msg: pb.SecAggMessage) -> pb.SecAggMessage:
        """The reply to one message, or Refused (a clean, record-free reason)."""
        self._expire()
        kind = msg.WhichOneof("body")
        if kind == "session":
            return pb.SecAggMessage(advertise=self._join(msg.session))
        if kind == "advertise_set":
            o = self._find(msg.advertise_set.context)
            return pb.SecAggMessage(share_keys=o.client.share_keys(msg.advertise_set))
        if kind == "share_set":
            o = self._find(msg.share_set.context)
            if o.client.stage is not Stage.MASKED_INPUT:
                raise Refused(f"this node is at stage {o.client.stage.value}, not masked_input")
            vector = self._vector_for(o.session)
            return pb.SecAggMessage(masked_input=o.client.masked_input(msg.share_set, vector))
        if kind == "consistency_request":
            o = self._find(msg.consistency_request.context)
            return pb.SecAggMessage(consistency=o.client.consistency(msg.consistency_request))
        if kind == "unmask_request":
            o = self._find(msg.unmask_request.context)
            return pb.SecAggMessage(unmask=o.client.unmask(msg.unmask_request))
        raise Refused("a node does not accept that secure-aggregation message")

    def _join(self, session: pb.SecAggSession) -> pb.SecAggAdvertise:
        roster = validate_session(session)
        if session.session_id in self._seen:
            raise Refused("this node has already joined a session with that id")
        if len(self._open) >= MAX_OPEN_SESSIONS:
            raise Refused("too many secure-aggregation sessions are open; try later")
        mine = [i for i, k in roster.items() if k == self._identity.public]
        if not mine:
            raise Refused("this node is not in the session's roster")
        client = SecAggClient(session, mine[0], self._identity)
        self._seen.add(session.session_id)
        self._open[client.context] = _Open(client, session, self._clock())
        return client.advertise()

    def _find(self, context: bytes) -> _Open:
        o = self._open.get(context)
        if o is None:
            raise Refused("no open secure-aggregation session has that context")
        return o


Call = Callable[[int, pb.SecAggMessage], Awaitable[pb.SecAggMessage]]


@dataclass(frozen=True)
class Failure:
    node: int
    stage: Stage
    reason: str


async def _stage(
    call: Call,
    requests: dict[int, pb.SecAggMessage],
    deadline_s: float,
    stage: Stage,
    failures: list[Failure],
) -> dict[int, pb.SecAggMessage]:
    tasks = {i: asyncio.ensure_future(call(i, m)) for i, m in requests.items()}
    if tasks:
        await asyncio.wait(tasks.values(), timeout=deadline_s)
    out = {}
    for i, task in tasks.items():
        if not task.done():
            task.cancel()
            failures.append(Failure(i, stage, "no answer by the stage deadline"))
        elif task.cancelled():
            failures.append(Failure(i, stage, "the call was cancelled"))
        elif task.exception() is not None:
            failures.append(
                Failure(i, stage, f"the call failed: {type(task.exception()).__name__}")
            )
        else:
            out[i] = task.result()
    return out


async def run_session(
    session: pb.SecAggSession,
    call: Call,
    *,
    server: SecAggServer | None = None,
    failures: list[Failure] | None = None,
) -> SecAggResult:
    """Drive one session over `call`, stage by stage, each under its deadline.

    Returns the sum, or raises Aborted naming the stage and the count. `failures`
    collects, for each node left out, the stage and a reason."""
    srv = server if server is not None else SecAggServer(session)
    failed: list[Failure] = failures if failures is not None else []
    deadline = session.stage_deadline_ms / 1000
    everyone = sorted(p.index for p in session.participants)

    def take(
        replies: dict[int, pb.SecAggMessage],
        stage: Stage,
        kind: str,
        accept: Callable[[pb.SecAggMessage], None],
    ) -> None:
        for i, reply in sorted(replies.items()):
            if reply.WhichOneof("body") != kind:
                failed.append(Failure(i, stage, "answered with the wrong message"))
                continue
            try:
                accept(reply)
            except Refused as e:
                failed.append(Failure(i, stage, str(e)))

    replies = await _stage(
        call,
        {i: pb.SecAggMessage(session=session) for i in everyone},
        deadline,
        Stage.ADVERTISE,
        failed,
    )
    take(replies, Stage.ADVERTISE, "advertise", lambda m: srv.accept_advertise(m.advertise))
    advertised = srv.close_advertise()

    live = [a.sender for a in advertised.advertisements]
    request = pb.SecAggMessage(advertise_set=advertised)
    replies = await _stage(call, dict.fromkeys(live, request), deadline, Stage.SHARE_KEYS, failed)
    take(replies, Stage.SHARE_KEYS, "share_keys", lambda m: srv.accept_share_keys(m.share_keys))
    share_sets = srv.close_share_keys()

    requests = {i: pb.SecAggMessage(share_set=s) for i, s in share_sets.items()}
    replies = await _stage(call, requests, deadline, Stage.MASKED_INPUT, failed)
    take(
        replies,
        Stage.MASKED_INPUT,
        "masked_input",
        lambda m: srv.accept_masked_input(m.masked_input),
    )
    consistency = srv.close_masked_input()

    request = pb.SecAggMessage(consistency_request=consistency)
    replies = await _stage(
        call, dict.fromkeys(consistency.survivors, request), deadline, Stage.CONSISTENCY, failed
    )
    take(replies, Stage.CONSISTENCY, "consistency", lambda m: srv.accept_consistency(m.consistency))
    unmask = srv.close_consistency()

    request = pb.SecAggMessage(unmask_request=unmask)
    signers = [c.sender for c in unmask.signatures]
    replies = await _stage(call, dict.fromkeys(signers, request), deadline, Stage.UNMASK, failed)
    take(replies, Stage.UNMASK, "unmask", lambda m: srv.accept_unmask(m.unmask))
    return srv.finish()
