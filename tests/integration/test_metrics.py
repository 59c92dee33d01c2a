"""What an operator sees of a running node: the Prometheus endpoint counted against the
requests actually sent, the plaintext health port, and one log line per request."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tessera import observability, probe
from tessera.wire.v1 import node_pb2
from tests.support import federation as fedlib

T1 = "cla-by-age-and-placement"
DAYS = ["2025-03-31", "2024-03-31", "2023-03-31"]


@dataclass
class Observed:
    fed: fedlib.Federation
    node: Any

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        port = self.node.running.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            text = r.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


@pytest.fixture
def observed(fed: fedlib.Federation) -> Iterator[Observed]:
    from tessera.node.main import start

    cfg = fedlib.node_config(fed, "Leeds")
    fedlib.ingest_council(fed, cfg)
    node = start(cfg, ops=observability.OpsOptions(metrics="127.0.0.1:0", health="127.0.0.1:0"))
    try:
        yield Observed(fed, node)
    finally:
        node.stop(0)


def _count(samples: dict[Any, float], method: str, status: str) -> float:
    key = (
        "tessera_requests_total",
        (("method", method), ("server", "node"), ("status", status)),
    )
    return samples.get(key, 0.0)


def test_metrics_count_the_requests_sent_under_load(
    observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    fed, node = observed.fed, observed.node
    coordinator = fedlib.node_stub(fed, node.port)
    stranger = fedlib.node_stub(fed, node.port, as_name="stranger")
    raw = fed.channel("coordinator", node.port).unary_unary(
        "/tessera.wire.v1.NodeService/Describe",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    before = observed.scrape()
    remaining_before = _remaining(before)
    spent_before = _spent(node.service.status())
    signed = fedlib.sign_template(fed.template(T1), fed.approvers[:2])

    def refused(call: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as e:
            call()
        return e.value.code()

    with caplog.at_level(logging.INFO, logger="tessera.rpc"):
        with ThreadPoolExecutor(max_workers=4) as pool:
            ok = list(
                pool.map(lambda _: coordinator.Describe(node_pb2.DescribeRequest()), range(12))
            )
            denied = list(
                pool.map(
                    lambda _: refused(lambda: stranger.Describe(node_pb2.DescribeRequest())),
                    range(5),
                )
            )
            garbled = list(pool.map(lambda _: refused(lambda: raw(b"\xff\xff\xff")), range(3)))
            replies = list(
                pool.map(
                    lambda day: coordinator.Execute(
                        fedlib.execute_request(fed, signed, {"on_date": day})
                    ),
                    DAYS,
                )
            )
        mid = observed.scrape()  # a scrape while the server is still serving
    assert len(ok) == 12
    assert set(denied) == {grpc.StatusCode.PERMISSION_DENIED}
    assert set(garbled) == {grpc.StatusCode.INVALID_ARGUMENT}

    after = observed.scrape()
    assert after == mid or _count(after, "Describe", "OK") == _count(mid, "Describe", "OK")
    assert _count(after, "Describe", "OK") - _count(before, "Describe", "OK") == 12
    assert _count(after, "Describe", "PERMISSION_DENIED") == 5
    assert _count(after, "Describe", "INVALID_ARGUMENT") == 3
    assert _count(after, "Execute", "OK") == 3
    # Every call is timed: the histogram's count is the calls' count.
    describe_calls = sum(
        _count(after, "Describe", s) for s in ("OK", "PERMISSION_DENIED", "INVALID_ARGUMENT")
    )
    hist = ("tessera_request_duration_seconds_count", (("method", "Describe"), ("server", "node")))
    assert after[hist] == describe_calls
    execute_hist = (
        "tessera_request_duration_seconds_count",
        (("method", "Execute"), ("server", "node")),
    )
    assert after[execute_hist] == 3

    # Budget left per accountant follows the spend the node reports.
    remaining_after = _remaining(after)
    status = node.service.status()
    for d in status:
        accountant = d.accountant or d.name
        for kind, total in d.budget_total.items():
            assert remaining_after[(accountant, kind)] == pytest.approx(
                max(total - d.budget_spent[kind], 0.0)
            )
    # ... and falls by what the node's ledger says these answers spent (in the
    # accountant's own unit, which need not be the unit an answer's cost is given in).
    spent_after = _spent(status)
    assert sum(_charged(r) for r in replies) > 0
    drop = sum(remaining_before.values()) - sum(remaining_after.values())
    assert drop > 0
    assert drop == pytest.approx(sum(spent_after.values()) - sum(spent_before.values()))
    # The audit head is the last entry the node wrote.
    last = node.service.ledger.audit_log.last()
    assert after[("tessera_audit_head_seq", ())] == last.seq
    assert last.seq >= max(r.audit_seq for r in replies)

    # One log line per request, with its id, status, outcome and cost; no values.
    lines = [r for r in caplog.records if getattr(r, "event", None) == "rpc"]
    assert len(lines) == 12 + 5 + 3 + 3
    executes = [r for r in lines if r.method == "Execute"]
    assert {r.status for r in executes} == {"OK"}
    assert {r.outcome for r in executes} == {"answered"}
    assert all(getattr(r, "request_id", None) for r in executes)
    assert sorted(r.cost for r in executes) == pytest.approx(sorted(_charged(x) for x in replies))
    assert {r.outcome for r in lines if r.status != "OK"} == {"refused"}
    formatted = [observability.JsonFormatter().format(r) for r in lines]
    for text in formatted:
        body = json.loads(text)
        assert body["event"] == "rpc" and "status" in body and "duration_ms" in body
        for day in DAYS:
            assert day not in text  # parameter values never reach the log


def _charged(reply: Any) -> float:
    fields = reply.answer.charged.ListFields()
    return float(fields[0][1]) if fields else 0.0


def _spent(status: Any) -> dict[tuple[str, str], float]:
    return {
        (d.accountant or d.name, kind): spent
        for d in status
        for kind, spent in d.budget_spent.items()
    }


def _remaining(samples: dict[Any, float]) -> dict[tuple[str, str], float]:
    out = {}
    for (name, labels), value in samples.items():
        if name == "tessera_budget_remaining":
            d = dict(labels)
            out[(d["accountant"], d["measure"])] = value
    assert out, "no budget gauge"
    return out


def test_the_plaintext_health_port_serves_health_only(observed: Observed) -> None:
    port = observed.node.running.health_port
    assert port is not None and port != observed.node.port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary(
                "/tessera.wire.v1.NodeService/Describe",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )(b"", timeout=10)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # The probe containers use says the same, and fails on a port with no health server.
    assert probe.check(f"127.0.0.1:{port}")
    assert probe.main([f"127.0.0.1:{port}"]) == 0
    assert not probe.check(f"127.0.0.1:{observed.node.port}", timeout=5)
    # The mTLS port still refuses a plaintext client.
    with grpc.insecure_channel(f"127.0.0.1:{observed.node.port}") as ch:
        with pytest.raises(grpc.RpcError) as e:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_goes_not_serving_on_shutdown(fed: fedlib.Federation) -> None:
    from tessera.node.main import start

    cfg = fedlib.node_config(fed, "Leeds")
    node = start(cfg, ops=observability.OpsOptions(health="127.0.0.1:0"))
    port = node.running.health_port
    node.running.health.enter_graceful_shutdown()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
    node.stop(0)
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_log_formats_are_one_line_each() -> None:
    record = logging.LogRecord("tessera.rpc", logging.INFO, "", 0, "rpc", None, None)
    record.__dict__.update({"event": "rpc", "method": "Execute", "status": "OK", "cost": 0.5})
    as_json = json.loads(observability.JsonFormatter().format(record))
    assert as_json["method"] == "Execute" and as_json["cost"] == 0.5
    kv = observability.KeyValueFormatter().format(record)
    assert "\n" not in kv and "method=Execute" in kv and "status=OK" in kv


def test_the_coordinator_counts_streamed_queries(tmp_path: Any) -> None:
    """RunQuery streams its events: it is timed and counted when the stream ends."""
    from tests.support import coordinator as coordlib

    region = coordlib.start_region(tmp_path, ("Leeds", "Bradford"))
    try:
        coordlib.published(region, T1)
        analyst = region.analyst()
        for day in DAYS[:2]:
            analyst.run_query(T1, {"on_date": day}, mode="combined")
        registry = region.coordinator.running.metrics.registry

        def sample(name: str, **labels: str) -> float | None:
            value = registry.get_sample_value(name, {"server": "coordinator", **labels})
            return None if value is None else float(value)

        # The client returns on the result event; the server records the call when
        # its stream ends, a moment later.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sample("tessera_request_duration_seconds_count", method="RunQuery") == 2:
                break
            time.sleep(0.05)
        assert sample("tessera_requests_total", method="RunQuery", status="OK") == 2
        assert sample("tessera_request_duration_seconds_count", method="RunQuery") == 2
        assert sample("tessera_requests_total", method="SubmitTemplate", status="OK") == 1
        assert sample("tessera_requests_total", method="AddApproval", status="OK") == 2
        # Each node answered both, through its own interceptor.
        for node in region.nodes.values():
            got = node.running.metrics.registry.get_sample_value(
                "tessera_requests_total", {"server": "node", "method": "Execute", "status": "OK"}
            )
            assert got == 2
    finally:
        region.stop()
