"""Run one session in-process: the same state machines, no network (tests, bench).

`drop` names, for some nodes, the stage at which that node stops answering: it sends
nothing from that stage on. `tamper` may rewrite a message on its way to the server.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from functools import partial
from multiprocessing.connection import Connection

import numpy as np

from tessera import keys
from tessera.secagg.protocol import (
    IntVector,
    Refused,
    SecAggClient,
    SecAggResult,
    SecAggServer,
    Stage,
)
from tessera.wire.v1 import secagg_pb2 as pb

STAGES = (Stage.ADVERTISE, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY, Stage.UNMASK)


def make_session(
    session_id: str,
    identities: Mapping[int, keys.SigningKey],
    threshold: int,
    vector_length: int,
    stage_deadline_ms: int = 10_000,
) -> pb.SecAggSession:
    return pb.SecAggSession(
        session_id=session_id,
        threshold=threshold,
        vector_length=vector_length,
        stage_deadline_ms=stage_deadline_ms,
        participants=[
            pb.SecAggParticipant(index=i, node_key_id=k.public.key_id)
            for i, k in sorted(identities.items())
        ],
    )


def run(
    session: pb.SecAggSession,
    identities: Mapping[int, keys.SigningKey],
    vectors: Mapping[int, IntVector],
    *,
    drop: Mapping[int, Stage] | None = None,
    server: SecAggServer | None = None,
    tamper: Callable[[pb.SecAggMessage], pb.SecAggMessage] | None = None,
    refusals: list[tuple[int, Stage, str]] | None = None,
) -> SecAggResult:
    """The sum, or the protocol's Aborted/Refused: never a wrong sum.

    `tamper` sees every message in both directions, wrapped in SecAggMessage. With
    `refusals` given, a message refused by either side counts as that node failing at
    that stage (recorded there) and the session goes on, as it would on the wire;
    without it, the first refusal is raised."""
    dropped = dict(drop or {})
    srv = server if server is not None else SecAggServer(session)
    clients = {i: SecAggClient(session, i, k) for i, k in identities.items()}

    def alive(i: int, stage: Stage) -> bool:
        return i not in dropped or STAGES.index(dropped[i]) > STAGES.index(stage)

    def send(msg: pb.SecAggMessage) -> pb.SecAggMessage:
        if tamper is None:
            return msg
        copy = pb.SecAggMessage()
        copy.CopyFrom(msg)
        return tamper(copy)

    def step(i: int, stage: Stage, action: Callable[[], None]) -> None:
        if not alive(i, stage):
            return
        try:
            action()
        except Refused as e:
            if refusals is None:
                raise
            refusals.append((i, stage, str(e)))
            dropped[i] = stage

    def advertise(i: int) -> None:
        srv.accept_advertise(send(pb.SecAggMessage(advertise=clients[i].advertise())).advertise)

    for i in clients:
        step(i, Stage.ADVERTISE, partial(advertise, i))
    advertised = send(pb.SecAggMessage(advertise_set=srv.close_advertise())).advertise_set

    def share(i: int) -> None:
        out = send(pb.SecAggMessage(share_keys=clients[i].share_keys(advertised)))
        srv.accept_share_keys(out.share_keys)

    for i in [a.sender for a in advertised.advertisements if a.sender in clients]:
        step(i, Stage.SHARE_KEYS, partial(share, i))
    share_sets = srv.close_share_keys()

    def mask(i: int) -> None:
        share_set = send(pb.SecAggMessage(share_set=share_sets[i])).share_set
        out = clients[i].masked_input(share_set, vectors[i])
        srv.accept_masked_input(send(pb.SecAggMessage(masked_input=out)).masked_input)

    for i in share_sets:
        step(i, Stage.MASKED_INPUT, partial(mask, i))
    request = srv.close_masked_input()

    def confirm(i: int) -> None:
        shown = send(pb.SecAggMessage(consistency_request=request)).consistency_request
        out = send(pb.SecAggMessage(consistency=clients[i].consistency(shown)))
        srv.accept_consistency(out.consistency)

    for i in request.survivors:
        step(i, Stage.CONSISTENCY, partial(confirm, i))
    unmask = srv.close_consistency()

    def reveal(i: int) -> None:
        shown = send(pb.SecAggMessage(unmask_request=unmask)).unmask_request
        out = clients[i].unmask(shown)
        srv.accept_unmask(send(pb.SecAggMessage(unmask=out)).unmask)

    for signed in unmask.signatures:
        step(signed.sender, Stage.UNMASK, partial(reveal, signed.sender))
    return srv.finish()


_STAGE_OF = {
    "session": Stage.ADVERTISE,
    "advertise_set": Stage.SHARE_KEYS,
    "share_set": Stage.MASKED_INPUT,
    "consistency_request": Stage.CONSISTENCY,
    "unmask_request": Stage.UNMASK,
}


def serve_pipe(
    conn: Connection, identity_pem: bytes, vector: list[int], die_at: str | None
) -> None:
    """A node process for tests on real processes: serves its sessions over `conn`.

    Each request is a serialized SecAggMessage; each reply is b"M" + a serialized
    SecAggMessage, or b"E" + the refusal's reason. With `die_at` set to a stage's
    name, the process kills itself (SIGKILL, no clean-up) on receiving that stage's
    request."""
    from tessera.secagg.roles import NodeSessions

    identity = keys.SigningKey.from_pem(identity_pem)
    values = np.asarray(vector, dtype=np.int64)
    node = NodeSessions(identity, lambda session: values)
    while True:
        try:
            raw = conn.recv_bytes()
        except EOFError:
            return
        msg = pb.SecAggMessage.FromString(raw)
        stage = _STAGE_OF.get(msg.WhichOneof("body") or "")
        if stage is not None and die_at == stage.value:
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            conn.send_bytes(b"M" + node.handle(msg).SerializeToString())
        except Refused as e:
            conn.send_bytes(b"E" + str(e).encode())
