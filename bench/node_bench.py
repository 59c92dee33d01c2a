"""Scenarios 1 and 5: one node process answering one query at a time, and its memory.

Latency is measured from the client side: a signed ExecuteRequest goes out over
gRPC with mutual TLS and the clock stops when the reply is in, so it includes the
node's signature checks, the query, the noise, the ledger fsync and the audit
append. Each uncached measurement asks a distinct question (another period); the
cached path asks one question again and again, with fresh request ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from grpc import aio

from bench import stats
from bench.cluster import COORDINATOR, HIST, MEAN, Cluster, NodeSpec, Questions
from bench.data import DATASET, TABLE, Generated
from tessera import templates
from tessera.demo.processes import Child
from tessera.node import compiler, storage, vault
from tessera.node.engine import execute
from tessera.node.engine import frame as frames
from tessera.node.ingest.manifest import sealed_path
from tessera.templates.model import Template
from tessera.wire.v1 import node_pb2, node_pb2_grpc


@dataclass(frozen=True)
class NodePlan:
    sizes: tuple[int, ...]  # histogram sizes, one node process each
    reps: dict[int, int]  # measured runs per size (after warm-up)
    warmup: dict[int, int]
    mean_size: int  # where the clamped mean and the cached path are measured
    cached_requests: int
    cached_concurrency: int


class NodeConn:
    """A client of one node with the coordinator's certificate, as the harness's caller."""

    def __init__(self, cluster: Cluster, port: int) -> None:
        creds = cluster.tls(COORDINATOR).load().channel_credentials()
        self.channel = aio.secure_channel(f"localhost:{port}", creds)
        self.stub = node_pb2_grpc.NodeServiceStub(self.channel)

    async def execute(self, req: node_pb2.ExecuteRequest, cached: bool) -> float:
        start = time.perf_counter()
        reply = await self.stub.Execute(req, timeout=600)
        ms = (time.perf_counter() - start) * 1000
        if reply.answer.from_cache != cached:
            raise RuntimeError(f"expected from_cache={cached}, got {reply.answer.from_cache}")
        return ms


async def latency(
    conn: NodeConn,
    make: Callable[[], node_pb2.ExecuteRequest],
    warmup: int,
    reps: int,
    *,
    cached: bool,
    alongside: dict[str, Callable[[], float]] | None = None,
    pid: int | None = None,
) -> dict[str, Any]:
    """One request at a time, each signed just before it is sent (not timed). After each,
    every `alongside` callable is timed too, so all the series see the same machine
    load. With `pid`, the node's CPU time per measured request is reported."""
    samples: list[float] = []
    beside: dict[str, list[float]] = {name: [] for name in alongside or {}}
    cpu = 0.0
    for i in range(warmup + reps):
        if i == warmup and pid is not None:
            cpu = stats.cpu_seconds(pid)
        ms = await conn.execute(make(), cached)
        if pid is not None:
            used = stats.cpu_seconds(pid)
        others = {name: fn() for name, fn in (alongside or {}).items()}
        if pid is not None:
            cpu += stats.cpu_seconds(pid) - used  # the node idles meanwhile; be exact
        if i >= warmup:
            samples.append(ms)
            for name, v in others.items():
                beside[name].append(v)
    out = stats.summary(samples, warmup)
    if pid is not None:
        out["node_cpu_ms_per_query"] = round((stats.cpu_seconds(pid) - cpu) * 1000 / reps, 1)
    for name, values in beside.items():
        out[name] = stats.summary(values, warmup)
    return out


async def throughput(
    conns: Sequence[NodeConn], reqs: Sequence[node_pb2.ExecuteRequest], *, cached: bool
) -> tuple[float, list[float]]:
    """All requests signed beforehand, sent by len(conns) concurrent clients."""
    pending = iter(reqs)
    samples: list[float] = []

    async def client(conn: NodeConn) -> None:
        for req in pending:  # one event loop: the shared iterator is safe
            samples.append(await conn.execute(req, cached))

    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    return len(reqs) / (time.perf_counter() - start), samples


class InProcess:
    """The node's compiled DuckDB query (its fallback) and its engine (what it runs for
    the benchmark's templates) on the same version, loaded the way the node loads it
    (decrypted into an in-memory DuckDB database), run in this process. `bare()` is the
    plain group-by over the same rows with no per-person bounding and no opt-out."""

    def __init__(self, gen: Generated, t: Template, questions: Questions, order_key: bytes) -> None:
        self.t, self.questions, self.order_key = t, questions, order_key
        dataset_dir = gen.data_dir / DATASET
        self.con = storage.open_sealed(sealed_path(dataset_dir, 1), vault.default_key(), DATASET, 1)
        # The node's engine (node/engine) on the same version: built once, as the node does.
        self.frame = frames.build(self.con, t.dataset, t.source, order_key)

    def engine(self) -> float:
        """The node's exact vectors from its engine's frame (what the node now runs)."""
        values = templates.bind(self.t, self.questions.next())
        start = time.perf_counter()
        assert self.frame is not None
        got = execute.run(self.frame, self.t, values, exclude_opted_out=True)
        assert got is not None
        return (time.perf_counter() - start) * 1000

    def once(self) -> float:
        values = templates.bind(self.t, self.questions.next())
        start = time.perf_counter()
        q = compiler.compile_query(self.t, values, exclude_opted_out=True, order_key=self.order_key)
        cur = self.con.cursor()
        try:
            compiler.run(cur, q)
        finally:
            cur.close()
        return (time.perf_counter() - start) * 1000

    def bare(self) -> float:
        p = Questions.params(self.questions.take())
        start = time.perf_counter()
        cur = self.con.cursor()
        try:
            cur.execute(BARE_HISTOGRAM, [p["period_start"], p["period_end"]]).fetchall()
        finally:
            cur.close()
        return (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self.con.close()


# The benchmark histogram's cells (5 age bands x 5 categories) counted with a plain
# GROUP BY: the same filter and cells as the node's query, with no bounding.
BARE_HISTOGRAM = f"""
SELECT cell, count(*) FROM (
  SELECT (CASE WHEN age_years BETWEEN 0 AND 0 THEN 0 WHEN age_years BETWEEN 1 AND 4 THEN 1
               WHEN age_years BETWEEN 5 AND 9 THEN 2 WHEN age_years BETWEEN 10 AND 15 THEN 3
               WHEN age_years BETWEEN 16 AND 18 THEN 4 END) * 5
         + (CASE WHEN attendance_category = '1' THEN 0 WHEN attendance_category = '2' THEN 1
                 WHEN attendance_category = '3' THEN 2 WHEN attendance_category = '4' THEN 3
                 ELSE 4 END) AS cell
  FROM {TABLE} WHERE arrival_date BETWEEN CAST(? AS DATE) AND CAST(? AS DATE))
WHERE cell IS NOT NULL GROUP BY cell
"""


async def _measure(
    cluster: Cluster,
    child: Child,
    org: str,
    plan: NodePlan,
    gen: Generated,
    questions: Questions,
) -> dict[str, Any]:
    n, port = gen.records, child.port
    hist_t = cluster.template(HIST)
    hist = cluster.signed(hist_t)
    conn = NodeConn(cluster, port)
    duck = InProcess(gen, hist_t, questions, cluster.secrets[child.name])
    out: dict[str, Any] = {}
    try:
        out["histogram"] = await latency(
            conn,
            lambda: cluster.request(hist, questions.next(), [org]),
            plan.warmup[n],
            plan.reps[n],
            cached=False,
            alongside={
                "in_process_duckdb": duck.once,
                "in_process_engine": duck.engine,
                "bare_duckdb": duck.bare,
            },
            pid=child.proc.pid,
        )
        if n != plan.mean_size:
            return out
        mean = cluster.signed(cluster.template(MEAN))
        out["mean"] = await latency(
            conn,
            lambda: cluster.request(mean, questions.next(), [org]),
            plan.warmup[n],
            plan.reps[n],
            cached=False,
            pid=child.proc.pid,
        )
        out["cached"] = await _cached(cluster, conn, port, org, plan, questions)
    finally:
        duck.close()
        await conn.channel.close()
    return out


async def _cached(
    cluster: Cluster, conn: NodeConn, port: int, org: str, plan: NodePlan, questions: Questions
) -> dict[str, Any]:
    hist = cluster.signed(cluster.template(HIST))
    params = questions.next()
    await conn.execute(cluster.request(hist, params, [org]), cached=False)  # now it is stored
    sequential = await latency(
        conn, lambda: cluster.request(hist, params, [org]), 10, 50, cached=True
    )
    conns = [NodeConn(cluster, port) for _ in range(plan.cached_concurrency)]
    try:
        warm = [cluster.request(hist, params, [org]) for _ in range(4 * len(conns))]
        await throughput(conns, warm, cached=True)  # handshakes and warm-up
        reqs = [cluster.request(hist, params, [org]) for _ in range(plan.cached_requests)]
        qps, loaded = await throughput(conns, reqs, cached=True)
    finally:
        for c in conns:
            await c.channel.close()
    return {
        "qps": round(qps, 1),
        "concurrency": len(conns),
        "requests": len(reqs),
        "sequential": sequential,
        "under_load": stats.summary(loaded),
    }


def run(
    cluster: Cluster,
    plan: NodePlan,
    data: dict[int, Generated],
    questions: Questions,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One node process per size, started, measured and stopped in turn."""
    result: dict[str, Any] = {"by_size": {}}
    for n in plan.sizes:
        spec = NodeSpec(f"single-{n}", f"Single node {n}", data[n].data_dir)
        (child,) = cluster.start_nodes([spec])
        try:
            idle = stats.peak_rss_mb(child.proc.pid)
            log(f"  node with {n:,} records: measuring")
            r = asyncio.run(_measure(cluster, child, spec.organisation, plan, data[n], questions))
            r["rss_mb"] = {"idle": idle["VmRSS"], **stats.peak_rss_mb(child.proc.pid)}
        finally:
            cluster.stop(child)
        result["by_size"][str(n)] = r
    return result
