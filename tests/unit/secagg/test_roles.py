"""The integration edges: a node's session table and the coordinator's stage driver
with deadlines; then dropouts at every stage on real, killed node processes."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

import numpy as np
import pytest

from tessera import keys
from tessera.secagg import Aborted, Refused, SecAggResult, Stage, local
from tessera.secagg.roles import Failure, NodeSessions, run_session
from tessera.wire.v1 import secagg_pb2 as pb

N, T, LENGTH = 5, 3, 16
DEADLINE_MS = 400


def _setup(
    session_id: str,
) -> tuple[dict[int, keys.SigningKey], dict[int, np.ndarray], pb.SecAggSession]:
    ids = {i: keys.SigningKey.generate() for i in range(1, N + 1)}
    rng = np.random.default_rng(3)
    vectors = {i: rng.integers(0, 100, LENGTH).astype(np.int64) for i in ids}
    return ids, vectors, local.make_session(session_id, ids, T, LENGTH, DEADLINE_MS)


_KIND_STAGE = {
    "session": Stage.ADVERTISE,
    "advertise_set": Stage.SHARE_KEYS,
    "share_set": Stage.MASKED_INPUT,
    "consistency_request": Stage.CONSISTENCY,
    "unmask_request": Stage.UNMASK,
}


def _fixed(vector: np.ndarray) -> Callable[[pb.SecAggSession], np.ndarray]:
    return lambda session: vector


@pytest.mark.parametrize("stage", local.STAGES)
def test_a_node_that_goes_silent_is_left_out_at_the_deadline(stage: Stage) -> None:
    ids, vectors, session = _setup(f"req/silent/{stage.value}")
    nodes = {i: NodeSessions(k, _fixed(vectors[i])) for i, k in ids.items()}

    async def call(i: int, msg: pb.SecAggMessage) -> pb.SecAggMessage:
        if i == 2 and _KIND_STAGE[msg.WhichOneof("body") or ""] is stage:
            await asyncio.Event().wait()  # hangs: only the deadline ends it
        return nodes[i].handle(msg)

    failures: list[Failure] = []
    result = asyncio.run(run_session(session, call, failures=failures))
    assert failures == [Failure(2, stage, "no answer by the stage deadline")]
    assert (2 in result.contributors) is (stage in (Stage.CONSISTENCY, Stage.UNMASK))
    np.testing.assert_array_equal(result.total, sum(vectors[i] for i in result.contributors))


def test_the_node_table_joins_a_session_id_once_and_asks_for_its_vector_at_masking() -> None:
    ids, vectors, session = _setup("req/table/1")
    asked: list[str] = []

    def vector_for(s: pb.SecAggSession) -> np.ndarray:
        asked.append(s.session_id)
        return vectors[1]

    node = NodeSessions(ids[1], vector_for)
    reply = node.handle(pb.SecAggMessage(session=session))
    assert reply.advertise.sender == 1 and asked == []
    with pytest.raises(Refused, match="already joined"):
        node.handle(pb.SecAggMessage(session=session))
    with pytest.raises(Refused, match="no open"):
        node.handle(pb.SecAggMessage(share_set=pb.SecAggShareSet(context=b"x" * 32)))
    with pytest.raises(Refused, match="not in the session"):
        NodeSessions(keys.SigningKey.generate(), vector_for).handle(
            pb.SecAggMessage(session=local.make_session("req/table/2", ids, T, LENGTH))
        )
    with pytest.raises(Refused, match="does not accept"):
        node.handle(pb.SecAggMessage(masked_input=pb.SecAggMaskedInput()))
    # Out of order: a share set before the advertised set is refused, vector untouched.
    context = reply.advertise.context
    with pytest.raises(Refused, match="not masked_input"):
        node.handle(pb.SecAggMessage(share_set=pb.SecAggShareSet(context=context)))
    assert asked == []


def test_a_full_session_over_the_table_asks_each_node_for_its_vector_once() -> None:
    ids, vectors, session = _setup("req/table/3")
    asked: list[int] = []

    def make(i: int) -> NodeSessions:
        def vector_for(s: pb.SecAggSession) -> np.ndarray:
            asked.append(i)
            return vectors[i]

        return NodeSessions(ids[i], vector_for)

    nodes = {i: make(i) for i in ids}

    async def call(i: int, msg: pb.SecAggMessage) -> pb.SecAggMessage:
        return nodes[i].handle(msg)

    result = asyncio.run(run_session(session, call))
    assert sorted(asked) == list(ids)
    np.testing.assert_array_equal(result.total, sum(vectors.values()))
    # The session is finished: nothing more is answered for it, and its id is spent.
    with pytest.raises(Refused):
        nodes[1].handle(pb.SecAggMessage(session=session))


# -- real processes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def context() -> Iterator[multiprocessing.context.BaseContext]:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tessera.secagg.local", "tessera.secagg.roles"])
    yield ctx


def _run_on_processes(
    ctx: multiprocessing.context.BaseContext, session_id: str, die: dict[int, Stage]
) -> tuple[dict[int, np.ndarray], list[Failure], SecAggResult | Aborted]:
    ids, vectors, session = _setup(session_id)
    procs, conns = {}, {}
    for i, k in ids.items():
        parent, child = ctx.Pipe()
        stage = die.get(i)
        p = ctx.Process(  # type: ignore[attr-defined]
            target=local.serve_pipe,
            args=(child, k.private_pem(), vectors[i].tolist(), stage.value if stage else None),
        )
        p.start()
        child.close()
        procs[i], conns[i] = p, parent
    locks = {i: asyncio.Lock() for i in ids}

    def exchange(conn: Connection, data: bytes) -> bytes:
        conn.send_bytes(data)
        return conn.recv_bytes()

    async def call(i: int, msg: pb.SecAggMessage) -> pb.SecAggMessage:
        async with locks[i]:
            raw = await asyncio.to_thread(exchange, conns[i], msg.SerializeToString())
        if raw[:1] != b"M":
            raise Refused(raw[1:].decode())
        return pb.SecAggMessage.FromString(raw[1:])

    failures: list[Failure] = []
    try:
        outcome: object = asyncio.run(run_session(session, call, failures=failures))
    except Aborted as e:
        outcome = e
    finally:
        for i in ids:
            conns[i].close()
            procs[i].join(timeout=10)
    for i, stage in die.items():
        assert procs[i].exitcode == -9, (i, stage)  # it really was killed
    return vectors, failures, outcome  # type: ignore[return-value]


@pytest.mark.parametrize("stage", local.STAGES)
def test_a_node_process_killed_at_each_stage(
    context: multiprocessing.context.BaseContext, stage: Stage
) -> None:
    vectors, failures, outcome = _run_on_processes(context, f"req/kill/{stage.value}", {4: stage})
    assert not isinstance(outcome, Aborted), outcome
    assert [(f.node, f.stage) for f in failures] == [(4, stage)]
    assert (4 in outcome.contributors) is (stage in (Stage.CONSISTENCY, Stage.UNMASK))
    np.testing.assert_array_equal(outcome.total, sum(vectors[i] for i in outcome.contributors))


def test_killing_too_many_node_processes_releases_nothing_and_says_why(
    context: multiprocessing.context.BaseContext,
) -> None:
    die = {2: Stage.MASKED_INPUT, 3: Stage.MASKED_INPUT, 5: Stage.MASKED_INPUT}
    _, failures, outcome = _run_on_processes(context, "req/kill/many", die)
    assert isinstance(outcome, Aborted)
    assert "only 2 masked inputs arrived; the threshold is 3" in str(outcome)
    assert sorted(f.node for f in failures) == [2, 3, 5]
