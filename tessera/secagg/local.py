"""Run one session in-process: the same state machines, no network (tests, bench).

`drop` names, for some nodes, the stage at which that node stops answering: it sends
nothing from that stage on. `tamper` may rewrite a message on its way to the server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

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
) -> SecAggResult:
    """The sum, or the protocol's Aborted/Refused: never a wrong sum."""
    drop = dict(drop or {})
    srv = server if server is not None else SecAggServer(session)
    clients = {i: SecAggClient(session, i, k) for i, k in identities.items()}

    def alive(i: int, stage: Stage) -> bool:
        return i not in drop or STAGES.index(drop[i]) > STAGES.index(stage)

    def send(msg: pb.SecAggMessage) -> pb.SecAggMessage:
        return tamper(msg) if tamper is not None else msg

    for i, c in clients.items():
        if alive(i, Stage.ADVERTISE):
            srv.accept_advertise(send(pb.SecAggMessage(advertise=c.advertise())).advertise)
    advertised = srv.close_advertise()
    live = [a.sender for a in advertised.advertisements]
    for i in live:
        if alive(i, Stage.SHARE_KEYS):
            msg = send(pb.SecAggMessage(share_keys=clients[i].share_keys(advertised)))
            srv.accept_share_keys(msg.share_keys)
    share_sets = srv.close_share_keys()
    for i, share_set in share_sets.items():
        if alive(i, Stage.MASKED_INPUT):
            out = clients[i].masked_input(share_set, vectors[i])
            srv.accept_masked_input(send(pb.SecAggMessage(masked_input=out)).masked_input)
    request = srv.close_masked_input()
    for i in request.survivors:
        if alive(i, Stage.CONSISTENCY):
            msg = send(pb.SecAggMessage(consistency=clients[i].consistency(request)))
            srv.accept_consistency(msg.consistency)
    unmask = srv.close_consistency()
    for signed in unmask.signatures:
        if alive(signed.sender, Stage.UNMASK):
            try:
                out_u = clients[signed.sender].unmask(unmask)
            except Refused:
                continue
            srv.accept_unmask(send(pb.SecAggMessage(unmask=out_u)).unmask)
    return srv.finish()
