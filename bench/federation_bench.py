"""Scenarios 3 and 4: combined queries through a real coordinator process over 1..N
node processes, throughput with concurrent analysts, and the accuracy of the
combined answers against one central mechanism with the same privacy loss.

Latency is the analyst's view: a signed request goes to the coordinator
(`tessera.client.Client.submit_request`), which fans out to the nodes, combines
and streams the result back. Signing happens before the clock starts.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np

from bench import stats
from bench.cluster import HIST, Cluster, NodeSpec, Questions
from bench.data import Generated
from tessera import requests, results, templates
from tessera.client import Client, QueryResult
from tessera.node import compiler, privacy
from tessera.templates.model import Mode, Template, measure_sensitivities


@dataclass(frozen=True)
class FedPlan:
    node_counts: tuple[int, ...]
    reps: dict[int, int]
    warmup: int
    qps_node_counts: tuple[int, ...]
    qps_queries_per_analyst: int
    accuracy_queries: int  # per node count, the last measured runs


@dataclass(frozen=True)
class Asked:
    params: dict[str, str]
    audience: tuple[str, ...]
    result: QueryResult


class Analysts:
    """One coordinator client per analyst, as each would have on their own machine."""

    def __init__(self, cluster: Cluster, address: str, digest: str) -> None:
        self.digest = digest
        self.clients = {
            n: (Client(address, cluster.tls(n), k, timeout=600), k)
            for n, k in cluster.analysts.items()
        }

    def sign(
        self, name: str, params: dict[str, str], audience: Sequence[str]
    ) -> requests.SignedRequest:
        """The analyst's signed request (on the analyst's own machine, untimed)."""
        key = self.clients[name][1]
        req = requests.new_request(
            template_digest=self.digest,
            params=params,
            mode=Mode.COMBINED,
            audience=audience,
            analyst_key=key.public.key_id,
            now=datetime.now(UTC),
        )
        return requests.sign(req, key)

    def ask(
        self,
        name: str,
        params: dict[str, str],
        audience: Sequence[str],
        signed: requests.SignedRequest | None = None,
    ) -> tuple[float, Asked]:
        """`signed`: this request for `params`, signed beforehand (else signed now)."""
        client = self.clients[name][0]
        signed = signed or self.sign(name, params, audience)
        start = time.perf_counter()
        result = client.submit_request(signed)
        ms = (time.perf_counter() - start) * 1000
        if not result.released or len(result.nodes_answered) != len(audience):
            raise RuntimeError(f"query not fully answered: {result.nodes_missing or result}")
        return ms, Asked(params, tuple(audience), result)

    def close(self) -> None:
        for client, _ in self.clients.values():
            client.close()


def _publish(cluster: Cluster, address: str, t: Template) -> str:
    """The analyst submits the template; two of the three approvers sign it."""
    with Client(address, cluster.tls(cluster.analyst_names[0]), cluster.analyst) as c:
        digest = c.submit_template(t).digest
    for name, key in list(cluster.approvers.items())[:2]:
        with Client(address, cluster.tls(name), key) as c:
            c.approve(digest)
    return digest


def _throughput(
    analysts: Analysts, questions: Questions, audience: Sequence[str], per_analyst: int
) -> dict[str, Any]:
    names = list(analysts.clients)
    samples: list[float] = []
    lock = threading.Lock()

    def signed(count: int) -> dict[str, list[tuple[dict[str, str], requests.SignedRequest]]]:
        # Signed beforehand, as on each analyst's own machine: the signing is not the
        # federation's work, and here it would take the cores the federation uses.
        out = {}
        for n in names:
            asked = [questions.next() for _ in range(count)]
            out[n] = [(p, analysts.sign(n, p, audience)) for p in asked]
        return out

    def analyst(name: str, mine: list[tuple[dict[str, str], requests.SignedRequest]]) -> None:
        for params, s in mine:
            ms, _asked = analysts.ask(name, params, audience, s)
            with lock:
                samples.append(ms)

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        warm = signed(1)
        list(pool.map(lambda n: analyst(n, warm[n]), names))  # warm-up: channels, handshakes
        samples.clear()
        todo = signed(per_analyst)
        start = time.perf_counter()
        list(pool.map(lambda n: analyst(n, todo[n]), names))
        wall = time.perf_counter() - start
    return {
        "qps": round(len(samples) / wall, 2),
        "analysts": len(names),
        "queries": len(samples),
        "latency": stats.summary(samples),
    }


def _accuracy(
    t: Template,
    asked: Sequence[Asked],
    db_of: dict[str, Generated],
    key_of: dict[str, bytes],
) -> dict[str, Any]:
    """Empirical RMS error of the combined cells against the exact sums, over the RMS of
    one central mechanism at the template's ε (the nodes hold disjoint people, so a
    central release of the pooled data would cost the same privacy loss)."""
    labels = {lab: i for i, lab in enumerate(results.cell_labels(t))}
    cons = {org: duckdb.connect(str(g.database), read_only=True) for org, g in db_of.items()}
    errors: list[float] = []
    suppressed = 0
    try:
        for a in asked:
            values = templates.bind(t, a.params)
            exact = sum(
                (
                    compiler.run(
                        cons[org].cursor(),
                        compiler.compile_query(
                            t, values, exclude_opted_out=True, order_key=key_of[org]
                        ),
                    )["count"]
                    for org in a.audience
                ),
                start=np.zeros(t.n_cells, dtype=np.int64),
            )
            for c in a.result.cells:
                if c.suppressed:
                    suppressed += 1
                    continue
                i = labels[tuple(c.key[d.name] for d in t.group_by)]
                errors.append(c.estimate - float(exact[i]))
    finally:
        for con in cons.values():
            con.close()
    (cal,) = privacy.calibrate(t.privacy, measure_sensitivities(t.statistic))
    central = math.sqrt(privacy.noise_variance(cal.kind, cal.scale))
    rms = math.sqrt(float(np.mean(np.square(errors)))) if errors else float("nan")
    n = len(asked[0].audience) if asked else 0
    return {
        "cells": len(errors),
        "suppressed_cells_skipped": suppressed,
        "rms_error_combined": round(rms, 3),
        "rms_error_central": round(central, 3),
        "ratio": round(rms / central, 3),
        "expected_sqrt_n": round(math.sqrt(n), 3),
    }


def run(
    cluster: Cluster,
    plan: FedPlan,
    data: Sequence[Generated],
    questions: Questions,
    log: Callable[[str], None],
) -> dict[str, Any]:
    biggest = max(plan.node_counts)
    specs = [NodeSpec(f"fed-{i + 1}", f"Site {i + 1}", data[i].data_dir) for i in range(biggest)]
    log(f"  starting {biggest} node processes and a coordinator")
    children = cluster.start_nodes(specs)
    coord = cluster.start_coordinator([(s, c.port) for s, c in zip(specs, children, strict=True)])
    address = f"localhost:{coord.port}"
    t = cluster.template(HIST)
    analysts = Analysts(cluster, address, _publish(cluster, address, t))
    first = cluster.analyst_names[0]
    orgs = [s.organisation for s in specs]
    db_of = {s.organisation: g for s, g in zip(specs, data, strict=False)}
    key_of = {s.organisation: cluster.secrets[s.slug] for s in specs}
    out: dict[str, Any] = {"latency": {}, "throughput": {}, "accuracy": {}}
    try:
        # Every node once first: each builds its frame in the background at start and
        # its tables on its first question, which would otherwise land in the series of
        # the smaller federations while the rest still compete for the cores.
        for _ in range(plan.warmup):
            analysts.ask(first, questions.next(), orgs)
        for n in plan.node_counts:
            log(f"  federation of {n}: latency")
            audience = orgs[:n]
            samples, asked = [], []
            cpu: dict[str, float] = {}
            for i in range(plan.warmup + plan.reps[n]):
                if i == plan.warmup:
                    cpu = {c.name: stats.cpu_seconds(c.proc.pid) for c in (coord, *children)}
                ms, a = analysts.ask(first, questions.next(), audience)
                if i >= plan.warmup:
                    samples.append(ms)
                    asked.append(a)
            used = {
                c.name: (stats.cpu_seconds(c.proc.pid) - cpu[c.name]) * 1000 / plan.reps[n]
                for c in (coord, *children)
            }
            out["latency"][str(n)] = {
                **stats.summary(samples, plan.warmup),
                # CPU all nodes together spend per combined query: on one machine, this
                # over the core count bounds the latency from below.
                "nodes_cpu_ms_per_query": round(sum(used.values()) - used[coord.name], 1),
                "coordinator_cpu_ms_per_query": round(used[coord.name], 1),
            }
            out["accuracy"][str(n)] = _accuracy(t, asked[-plan.accuracy_queries :], db_of, key_of)
        for n in plan.qps_node_counts:
            log(f"  federation of {n}: throughput with {len(analysts.clients)} analysts")
            out["throughput"][str(n)] = _throughput(
                analysts, questions, orgs[:n], plan.qps_queries_per_analyst
            )
        out["rss_mb"] = {c.name: stats.peak_rss_mb(c.proc.pid)["VmHWM"] for c in children}
    finally:
        analysts.close()
        cluster.stop(coord)
        for c in children:
            cluster.stop(c)
    out["coordinator"] = "coordinator.main process (RunQuery via tessera.client.Client)"
    return out
