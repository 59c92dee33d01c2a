"""Soak: 16 concurrent clients against one node process, over loopback mutual TLS,
for TESSERA_SOAK_SECONDS (default 600), with a mix of new and repeated questions
and a large test-only budget. Run on demand only: pytest -m soak.

Recorded in tests/adversarial/results/soak.json: errors by status, throughput, p50
and p99 latency per minute and their drift, the node's RSS over time (VmRSS from
/proc), and the ledger against the costs delivered. The ledger must equal the sum
of the `charged` costs in the replies exactly: the same multiset of costs, so the
same correctly rounded sum.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta

import grpc
import numpy as np
import pytest

from tessera import audit
from tessera.templates.model import Privacy
from tessera.wire.v1 import node_pb2
from tests.adversarial import fault_support as fs
from tests.support import federation as fedlib

T1 = "cla-by-age-and-placement"
T2 = "referrals-by-need-and-age"
CLIENTS = 16
# Bounded: at least 10 seconds, at most an hour.
SOAK_SECONDS = min(max(float(os.environ.get("TESSERA_SOAK_SECONDS", "600")), 10.0), 3600.0)
BUCKET_SECONDS = 60.0
RSS_EVERY = 5.0
REPEAT_SHARE = 0.5
POOL = 24  # repeated questions are drawn from this many


@dataclass(frozen=True)
class Call:
    end: float  # seconds since the start
    latency_ms: float
    status: str
    kind: str
    charged: float
    from_cache: bool


class Questions:
    """New questions never asked before (cheap: epsilon 0.01 or rho 0.005 each), and
    a pool of questions asked again and again (answered from the node's cache)."""

    def __init__(self, fed: fedlib.Federation) -> None:
        self.fed = fed
        t1 = dataclasses.replace(fed.template(T1), privacy=Privacy(epsilon=0.01))
        t2 = dataclasses.replace(fed.template(T2), privacy=Privacy(rho=0.005))
        self.signed = {
            T1: fedlib.sign_template(t1, fed.approvers[:2]),
            T2: fedlib.sign_template(t2, fed.approvers[:2]),
        }
        self._next = POOL
        self._lock = threading.Lock()

    def _params(self, i: int) -> tuple[str, dict[str, str]]:
        if i % 2 == 0 and i // 2 < 4000:
            return T1, {"on_date": (date(2015, 4, 1) + timedelta(days=i // 2)).isoformat()}
        a, b = divmod(i, 3000)
        start = date(2015, 4, 1) + timedelta(days=b)
        end = date(2026, 3, 31) - timedelta(days=a)
        return T2, {"period_start": start.isoformat(), "period_end": end.isoformat()}

    def new(self) -> node_pb2.ExecuteRequest:
        with self._lock:
            i = self._next
            self._next += 1
        name, params = self._params(i)
        return fedlib.execute_request(self.fed, self.signed[name], params)

    def repeated(self, rng: random.Random) -> node_pb2.ExecuteRequest:
        name, params = self._params(rng.randrange(POOL))
        return fedlib.execute_request(self.fed, self.signed[name], params)


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_ms": math.nan, "p99_ms": math.nan}
    a = np.asarray(latencies)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


@pytest.mark.soak
def test_soak_one_node(fed: fedlib.Federation) -> None:
    cfg = fs.big_budget_config(fed)
    fedlib.ingest_council(fed, cfg)
    node = fs.NodeProcess(fs.write_config(fed, cfg), fed.root / "node.log")
    questions = Questions(fed)
    calls: list[Call] = []
    lock = threading.Lock()
    stop = threading.Event()
    rss: list[tuple[float, int]] = []

    with node:
        node.start()
        t0 = time.monotonic()
        deadline = t0 + SOAK_SECONDS

        def client(seed: int) -> None:
            rng = random.Random(seed)
            stub = fedlib.node_stub(fed, node.port)
            local: list[Call] = []
            while time.monotonic() < deadline:
                repeat = rng.random() < REPEAT_SHARE
                req = questions.repeated(rng) if repeat else questions.new()
                started = time.monotonic()
                try:
                    reply = stub.Execute(req, timeout=60)
                    loss = reply.answer.charged
                    kind = loss.WhichOneof("loss")
                    call = Call(
                        time.monotonic() - t0,
                        (time.monotonic() - started) * 1000,
                        "OK",
                        kind,
                        float(getattr(loss, kind)),
                        reply.answer.from_cache,
                    )
                except grpc.RpcError as e:
                    call = Call(
                        time.monotonic() - t0,
                        (time.monotonic() - started) * 1000,
                        e.code().name,
                        "",
                        0.0,
                        False,
                    )
                local.append(call)
            with lock:
                calls.extend(local)

        def sample_rss() -> None:
            while True:
                kib = node.rss_kib()
                if kib is not None:
                    rss.append((time.monotonic() - t0, kib))
                if stop.wait(RSS_EVERY):  # a sampling period, not a readiness wait
                    return

        sampler = threading.Thread(target=sample_rss)
        sampler.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        sampler.join()
        stub = fedlib.node_stub(fed, node.port)
        budget = stub.GetBudget(node_pb2.GetBudgetRequest(), timeout=10)
        reported = {
            d.name: getattr(d.budget_spent, d.budget_spent.WhichOneof("loss"))
            for d in budget.datasets
        }
        node.stop()

    db = cfg.state_dir / "ledger.sqlite"
    ledger = fs.read_ledger(db)
    verified = audit.verify(db, fed.node_key.public)

    ok = [c for c in calls if c.status == "OK"]
    errors = Counter(c.status for c in calls if c.status != "OK")
    buckets = []
    for b in range(math.ceil(SOAK_SECONDS / BUCKET_SECONDS)):
        lo, hi = b * BUCKET_SECONDS, (b + 1) * BUCKET_SECONDS
        inside = [c for c in calls if lo <= c.end < hi]
        buckets.append(
            {
                "from_s": lo,
                "requests": len(inside),
                "errors": sum(1 for c in inside if c.status != "OK"),
                **_percentiles([c.latency_ms for c in inside if c.status == "OK"]),
            }
        )
    full = [b for b in buckets if b["requests"]]
    ledger_figures = {}
    exact = True
    for kind in ("epsilon", "rho"):
        delivered = sorted(c.charged for c in ok if c.kind == kind and c.charged > 0)
        released = ledger.release_costs.get(kind, [])
        same = delivered == released
        exact = exact and same
        ledger_figures[kind] = {
            "ledger_spent": math.fsum(released),
            "delivered_charged_sum": math.fsum(delivered),
            "ledger_releases": len(released),
            "fresh_answers_delivered": len(delivered),
            "same_multiset_of_costs": same,
        }
    warm = [kib for t, kib in rss if t >= min(60.0, SOAK_SECONDS / 4)]
    figures = {
        "seconds": SOAK_SECONDS,
        "clients": CLIENTS,
        "requests": len(calls),
        "answered": len(ok),
        "answered_from_cache": sum(1 for c in ok if c.from_cache),
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "throughput_per_s": len(calls) / SOAK_SECONDS,
        "latency_overall": _percentiles([c.latency_ms for c in ok]),
        "latency_per_minute": buckets,
        "p99_drift_last_over_first_minute": (
            full[-1]["p99_ms"] / full[0]["p99_ms"] if len(full) > 1 else 1.0
        ),
        "rss_kib": {
            "first": rss[0][1] if rss else None,
            "last": rss[-1][1] if rss else None,
            "max": max(k for _, k in rss) if rss else None,
            "growth": rss[-1][1] - rss[0][1] if rss else None,
            "growth_after_warmup": warm[-1] - warm[0] if len(warm) > 1 else None,
            "samples": [[round(t, 1), k] for t, k in rss],
        },
        "ledger": ledger_figures,
        "budget_reported_by_node": reported,
        "ledger_equals_delivered_exactly": exact,
        "audit_entries": verified.entries,
        "audit_ok": verified.ok,
    }
    fs.record("soak", "one_node", figures)

    assert figures["error_count"] == 0, errors
    assert exact, ledger_figures
    # Every request recorded belongs to a reply a client received (none lost).
    assert len(ledger.charged) == len(ok)
    assert reported["ssda903"] == pytest.approx(
        ledger_figures["epsilon"]["ledger_spent"], rel=1e-12
    )
    assert reported["cin"] == pytest.approx(ledger_figures["rho"]["ledger_spent"], rel=1e-12)
    assert verified.ok, verified.problems
