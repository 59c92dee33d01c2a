"""Secure-aggregation scenario: its cost next to per-node answers, in one run.

Eight real node processes (bench/cluster.py, mutual TLS), a 1,000-cell histogram
(200 single-year age bands x 5 attendance categories, zCDP). This process plays the
coordinator and times, alternating, (a) per-node mode: one Execute to each of the
eight nodes in parallel, and (b) one secure-aggregation session over the same eight
nodes (tessera.coordinator.secagg_run over ProtocolRound; threshold 7). Each
question is new, so every answer is computed and paid afresh.

Also: the bytes each node sends and receives in a session; a 10^5-cell vector through
the protocol in-process (tessera.secagg.local, the same state machines, no network);
and the error ratio of the secure-aggregation sum to one central discrete Gaussian at
the same rho, from the scales OpenDP calibrates (node/privacy.py): per-cell standard
deviation sqrt(k) * sigma_share over sigma_central, for k = 8 contributors.

`python -m bench.secagg_bench [--quick]` runs it alone and prints JSON;
`python -m bench --only secagg` runs it inside the harness.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc import aio

from bench import data, stats
from bench.cluster import HIST, Cluster, NodeSpec, Questions
from tessera import keys, requests, templates
from tessera.coordinator import secagg_run
from tessera.node import privacy
from tessera.secagg import local
from tessera.templates.model import Mode, Template, measure_sensitivities
from tessera.tls import pinned_options
from tessera.wire.v1 import node_pb2_grpc

NODES = 8
THRESHOLD = 7
RHO = 0.5


def histogram_1000(cluster: Cluster) -> Template:
    """The benchmark histogram widened to 1,000 cells, in rho, allowing secagg."""
    text = (Path(__file__).resolve().parent / "templates" / f"{HIST}.toml").read_text()
    start = text.index('bands = [\n  { label = "under 1"')
    end = text.index("]\n", start) + 2
    bands = ",\n".join(f'  {{ label = "{k}", min = {k}, max = {k} }}' for k in range(200))
    text = text[:start] + "bands = [\n" + bands + ",\n]\n" + text[end:]
    text = text.replace("epsilon = 0.5", f"rho = {RHO}")
    base = templates.load_toml(text)
    t = cluster.template(HIST)
    t = dataclasses.replace(
        base,
        id="ed-attendances-1000-cells",
        access=dataclasses.replace(t.access, threshold=THRESHOLD),
    )
    assert t.n_cells == 1000, t.n_cells
    return t


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def error_ratio(t: Template, contributors: int) -> dict[str, float]:
    c = privacy.calibrate(t.privacy, measure_sensitivities(t.statistic))[0]
    share = privacy.secagg_noise_share(
        c.loss, c.sensitivity.l2, THRESHOLD, t.n_cells, c.sensitivity.l1
    )
    central = c.scale
    return {
        "share_scale": round(share.scale, 4),
        "central_scale": round(central, 4),
        "charged_rho": share.rho,
        "secagg_error_ratio_vs_central": round(math.sqrt(contributors) * share.scale / central, 3),
        # With exactly t contributors, the fewest a release may have.
        "at_threshold": round(math.sqrt(THRESHOLD) * share.scale / central, 3),
        "per_node_error_ratio_vs_central": round(math.sqrt(contributors), 3),
    }


def big_vector(cells: int, n: int = NODES) -> dict[str, Any]:
    ids = {i: keys.SigningKey.generate() for i in range(1, n + 1)}
    session = local.make_session("bench/secagg/1", ids, THRESHOLD, cells)
    rng = np.random.default_rng(1)  # the inputs only; no noise is drawn here
    vectors = {i: rng.integers(0, 1000, cells, dtype=np.int64) for i in ids}
    start = time.perf_counter()
    result = local.run(session, ids, vectors)
    seconds = time.perf_counter() - start
    assert np.array_equal(result.total, sum(vectors.values()))
    return {
        "cells": cells,
        "nodes": n,
        "seconds_all_parties_one_process": round(seconds, 3),
        "masked_vector_bytes": cells * 8,
    }


def run(
    work: Path, log: Callable[[str], None], *, quick: bool = False, records: int | None = None
) -> dict[str, Any]:
    reps = 3 if quick else 20  # pairs of sessions, alternating: a steadier median
    records = records or (10**4 if quick else 10**5)
    slugs = [f"sa-{i + 1}" for i in range(NODES)]
    out: dict[str, Any] = {"nodes": NODES, "threshold": THRESHOLD, "records": records}
    with Cluster(work, slugs) as cluster:
        sets = [
            data.generate_in_child(work / "data" / f"sa-{i + 1}", records, i + 1)[0]
            for i in range(NODES)
        ]
        specs = [NodeSpec(s, f"Site {i + 1}", sets[i].data_dir) for i, s in enumerate(slugs)]
        children = cluster.start_nodes(specs)
        t = histogram_1000(cluster)
        st = cluster.signed(t)
        audience = [s.organisation for s in specs]
        questions = Questions()
        log(f"  {NODES} nodes, {t.n_cells} cells, {reps} rounds of each mode")
        tls = cluster.tls("coordinator").load()
        sync_stubs = [
            node_pb2_grpc.NodeServiceStub(
                grpc.secure_channel(
                    f"localhost:{c.port}", tls.channel_credentials(), options=pinned_options(s.slug)
                )
            )
            for s, c in zip(specs, children, strict=True)
        ]

        def per_node() -> float:
            req = cluster.request(st, questions.next(), audience)
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=NODES) as pool:
                list(pool.map(lambda stub: stub.Execute(req, timeout=120), sync_stubs))
            return (time.perf_counter() - start) * 1000

        # One event loop and one channel per node for every session, as the coordinator's
        # fan-out keeps them (and as per-node mode's stubs above): a session then pays no
        # TLS handshakes of its own.
        loop = asyncio.new_event_loop()

        async def open_channels() -> list[aio.Channel]:
            return [
                aio.secure_channel(
                    f"localhost:{c.port}", tls.channel_credentials(), options=pinned_options(s.slug)
                )
                for s, c in zip(specs, children, strict=True)
            ]

        channels = loop.run_until_complete(open_channels())
        members = [
            secagg_run.Member(s.organisation, "", node_pb2_grpc.NodeServiceStub(ch))
            for s, ch in zip(specs, channels, strict=True)
        ]

        async def session_once() -> tuple[float, secagg_run.SecAggOutcome]:
            req = requests.new_request(
                template_digest=templates.digest_of_bytes(st.canonical),
                params=questions.next(),
                mode=Mode.SECURE_AGGREGATION,
                audience=audience,
                analyst_key=cluster.analyst.public.key_id,
                now=datetime.now(UTC),
            )
            signed = requests.sign(req, cluster.analyst)
            start = time.perf_counter()
            o = await secagg_run.run(
                members,
                signed_template=st,
                signed=signed,
                request_id=req.request_id,
                threshold=THRESHOLD,
                vector_length=secagg_run.vector_length(t),
                stage_deadline_ms=60_000,
                record=True,
            )
            return (time.perf_counter() - start) * 1000, o

        async def close_channels() -> None:
            for ch in channels:
                await ch.close()

        plain: list[float] = []
        secure: list[float] = []
        received: list[int] = []
        pids = [c.proc.pid for c in children]
        cpu = {"plain": 0.0, "secure": 0.0}

        def nodes_cpu() -> float:
            return sum(stats.cpu_seconds(pid) for pid in pids)

        try:
            per_node()  # warm-up
            _, first = loop.run_until_complete(session_once())
            # As the coordinator does: the node keys learnt at the first session are
            # reused, so later sessions skip its Describe round.
            members[:] = [
                secagg_run.Member(m.organisation, first.node_keys[m.organisation], m.stub)
                for m in members
            ]
            for _ in range(reps):
                before = nodes_cpu()
                plain.append(per_node())
                mid = nodes_cpu()
                ms, o = loop.run_until_complete(session_once())
                cpu["plain"] += mid - before
                cpu["secure"] += nodes_cpu() - mid
                if o.total is None:
                    raise RuntimeError(f"a session released nothing: {o.aborted}")
                secure.append(ms)
                received.append(sum(len(b) for _, b in o.received))
        finally:
            loop.run_until_complete(close_channels())
            loop.close()
        p50_plain, p50_secure = statistics.median(plain), statistics.median(secure)
        out["per_node_p50_ms"] = round(p50_plain, 2)
        out["per_node_p95_ms"] = _pct(plain, 0.95)
        out["secagg_p50_ms"] = round(p50_secure, 2)
        out["secagg_p95_ms"] = _pct(secure, 0.95)
        out["secagg_overhead_ratio"] = round(p50_secure / p50_plain, 3)
        # All the nodes' CPU per answer in each mode (the 8 nodes share this machine's
        # cores, so this bounds each mode's latency from below).
        out["nodes_cpu_ms_per_query"] = {k: round(v * 1000 / reps, 1) for k, v in cpu.items()}
        # What the coordinator receives from each node in one session (its sends are the
        # relayed sets, of the same order), measured; the masked vector is 8 bytes a cell.
        out["bytes_from_each_node"] = round(statistics.median(received) / NODES)
        out["accuracy"] = error_ratio(t, NODES)
        out["secagg_error_ratio_vs_central"] = out["accuracy"]["secagg_error_ratio_vs_central"]
    log("  10^5-cell vector through the protocol (in-process)")
    out["vector_1e5"] = big_vector(10**4 if quick else 10**5)
    out["notes"] = [
        "per-node mode: one Execute to each node in parallel from this process; secure "
        "aggregation: the five stages of one session from this process, the same nodes; "
        "both over channels opened once, and node keys learnt once, as the coordinator "
        "keeps them",
        "error ratio from OpenDP's calibrated scales (sqrt(k) sigma_share / sigma_central)",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.secagg_bench")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tessera-secagg-bench-") as tmp:
        result = run(Path(tmp), lambda s: print(s, file=sys.stderr, flush=True), quick=args.quick)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
