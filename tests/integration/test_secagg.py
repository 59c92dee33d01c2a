"""Secure aggregation end to end: real council nodes over mutual TLS, driven by the
coordinator's session driver (tessera.coordinator.secagg_run) over ProtocolRound."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from tessera import answers, requests, schemas, startup, templates
from tessera.coordinator import secagg_run
from tessera.keys import SigningKey
from tessera.node import compiler, privacy, secagg_node
from tessera.node import main as node_main
from tessera.node.secagg_node import NO_ROSTER
from tessera.templates.model import Mode, Template, measure_sensitivities
from tessera.wire.v1 import common_pb2, node_pb2, node_pb2_grpc
from tessera.wire.v1 import secagg_pb2 as pb
from tests.support import coordinator as region_lib
from tests.support import federation as fedlib

T2 = "referrals-by-need-and-age"
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}


@pytest.fixture
def region(tmp_path: Path) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path, distinct_node_keys=True)
    try:
        yield r
    finally:
        r.stop()


def _template(region: region_lib.Region, threshold: int = 3) -> Template:
    return region.fed.template(T2, threshold=threshold)


def _signed(
    region: region_lib.Region,
    signed_template: common_pb2.SignedTemplate,
    mode: Mode = Mode.SECURE_AGGREGATION,
    audience: tuple[str, ...] = region_lib.COUNCILS,
) -> requests.SignedRequest:
    req = requests.new_request(
        template_digest=templates.digest_of_bytes(signed_template.canonical),
        params=P2,
        mode=mode,
        audience=audience,
        analyst_key=region.fed.analyst.public.key_id,
        now=datetime.now(UTC),
    )
    return requests.sign(req, region.fed.analyst)


def _exact(region: region_lib.Region, org: str, t: Template) -> np.ndarray[Any, Any]:
    """One node's exact vector, read directly (the test's own reference)."""
    svc = region.nodes[org].service
    params = templates.bind(t, P2)
    q = compiler.compile_query(
        t, params, exclude_opted_out=t.purpose != schemas.DIRECT_CARE, order_key=svc.secret
    )
    version = svc.catalog.latest(t.dataset)
    cur = svc.catalog.connect(version).cursor()
    try:
        exact = compiler.run(cur, q)
    finally:
        cur.close()
    return np.concatenate([exact[m] for m in measure_sensitivities(t.statistic)])


async def _run(
    region: region_lib.Region,
    st: common_pb2.SignedTemplate,
    signed: requests.SignedRequest,
    t: Template,
    *,
    attempt: int = 1,
    orgs: tuple[str, ...] = region_lib.COUNCILS,
    keys: dict[str, str] | None = None,
    **kw: Any,
) -> secagg_run.SecAggOutcome:
    """`keys` (organisation -> key id) stands in for a coordinator that lies about
    some nodes' identity keys in the session roster."""
    keys = keys or {}
    creds = region.fed.tls("coordinator").load().channel_credentials()
    channels = {o: aio.secure_channel(f"localhost:{region.nodes[o].port}", creds) for o in orgs}
    try:
        members = [
            secagg_run.Member(
                o,
                keys.get(o, region.fed.key_of(o).public.key_id),
                node_pb2_grpc.NodeServiceStub(ch),
            )
            for o, ch in channels.items()
        ]
        return await secagg_run.run(
            members,
            signed_template=st,
            signed=signed,
            request_id=requests.parse(signed.body).request_id,
            threshold=t.access.threshold,
            vector_length=secagg_run.vector_length(t),
            attempt=attempt,
            **kw,
        )
    finally:
        for ch in channels.values():
            await ch.close()


def _spent(region: region_lib.Region, org: str) -> float:
    return sum(r.rho for r in region.nodes[org].service.ledger.release_log())


def test_exact_sum_with_noise_off(region: region_lib.Region) -> None:
    for n in region.nodes.values():
        n.service.secagg_exact_for_tests = True  # test-only: no noise, no charge
    t = _template(region)
    st = fedlib.sign_template(t, region.fed.approvers[:2])
    out = asyncio.run(_run(region, st, _signed(region, st), t, record=True))
    assert not out.aborted, out.reasons
    expected = sum(_exact(region, o, t) for o in region_lib.COUNCILS)
    assert out.total is not None
    assert np.array_equal(out.total, expected)
    assert expected.sum() > 0
    assert out.contributors == tuple(sorted(region_lib.COUNCILS))
    assert out.dropped == () and out.excluded == ()
    # The coordinator's recorded view: no masked input is any node's own vector.
    masked = [
        m.masked_input.masked
        for _, raw in out.received
        if (m := pb.SecAggMessage.FromString(raw)).WhichOneof("body") == "masked_input"
    ]
    assert len(masked) == 3
    own = _exact(region, "Leeds", t).astype("<u8").tobytes()
    assert all(b != own for b in masked)
    # Masked cells look uniform mod 2^64: chi-square of their top 4 bits (16 bins; the
    # cells themselves are small counts, so unmasked they would all fall in bin 0).
    top = np.concatenate([np.frombuffer(b, dtype="<u8") >> np.uint64(60) for b in masked])
    counts = np.bincount(top.astype(np.int64), minlength=16)
    expected_per_bin = len(top) / 16
    chi2 = float(np.sum((counts - expected_per_bin) ** 2 / expected_per_bin))
    assert chi2 < 50.0, chi2  # 15 degrees of freedom: p < 1e-6 beyond 50


def test_noisy_release_charges_each_contributor_and_signs(region: region_lib.Region) -> None:
    t = _template(region)
    st = fedlib.sign_template(t, region.fed.approvers[:2])
    before = {o: _spent(region, o) for o in region_lib.COUNCILS}
    out = asyncio.run(_run(region, st, _signed(region, st), t))
    assert not out.aborted, out.reasons
    assert out.total is not None
    expected = sum(_exact(region, o, t) for o in region_lib.COUNCILS)
    c = privacy.calibrate(t.privacy, measure_sensitivities(t.statistic))[0]
    share = privacy.secagg_noise_share(
        c.loss, c.sensitivity.l2, 3, secagg_run.vector_length(t), c.sensitivity.l1
    )
    # Total noise scale is share.scale * sqrt(3); 6 sigma per cell bounds it.
    assert np.max(np.abs(out.total - expected)) < 6 * share.scale * np.sqrt(3) + 1
    assert share.rho <= t.privacy.rho * (1 + 1e-6)
    for o in region_lib.COUNCILS:
        charged = _spent(region, o) - before[o]
        assert charged == pytest.approx(share.rho)
        body, sig = out.statements[o]
        s = answers.verify(answers.SignedStatement(body, sig), region.fed.key_of(o).public.key_id)
        assert s.request_id == out.session_id and s.charged == pytest.approx(share.rho)


def test_session_is_joined_once_and_retry_is_a_fresh_charge(region: region_lib.Region) -> None:
    t = _template(region)
    st = fedlib.sign_template(t, region.fed.approvers[:2])
    signed = _signed(region, st)
    first = asyncio.run(_run(region, st, signed, t))
    assert not first.aborted
    spent = _spent(region, "Leeds")
    again = asyncio.run(_run(region, st, signed, t))  # same session id: refused, unpaid
    assert again.aborted and again.total is None
    assert "already joined" in " ".join(again.reasons.values())
    assert _spent(region, "Leeds") == spent
    retry = asyncio.run(_run(region, st, signed, t, attempt=2))
    assert not retry.aborted and retry.total is not None
    assert _spent(region, "Leeds") > spent
    assert not np.array_equal(retry.total, first.total)  # fresh noise


def test_refusals_are_precise(region: region_lib.Region) -> None:
    t = _template(region)
    st = fedlib.sign_template(t, region.fed.approvers[:2])
    stub = fedlib.node_stub(region.fed, region.nodes["Leeds"].port)

    def execute(mode: Mode) -> grpc.StatusCode:
        s = _signed(region, st, mode)
        req = node_pb2.ExecuteRequest(
            template=st, request=common_pb2.SignedRequest(canonical=s.body, signature=s.signature)
        )
        with pytest.raises(grpc.RpcError) as e:
            stub.Execute(req, timeout=10)
        return e.value.code()  # type: ignore[no-any-return]

    # Secure aggregation runs only through ProtocolRound; a combined-only template that
    # allows it is not answered in plain combined mode.
    assert execute(Mode.SECURE_AGGREGATION) == grpc.StatusCode.FAILED_PRECONDITION
    assert execute(Mode.COMBINED) == grpc.StatusCode.FAILED_PRECONDITION
    # A session whose first message has no signed request, or a plain-mode request.
    bare = node_pb2.ProtocolRoundRequest(
        session_id="x/secagg/1",
        payload=pb.SecAggMessage(
            session=pb.SecAggSession(session_id="x/secagg/1")
        ).SerializeToString(),
    )
    with pytest.raises(grpc.RpcError) as e:
        stub.ProtocolRound(bare, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        stub.ProtocolRound(node_pb2.ProtocolRoundRequest(session_id="x", payload=b"\xff\xff"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Garbage costs nothing and the node keeps serving.
    assert _spent(region, "Leeds") == 0.0
    out = asyncio.run(_run(region, st, _signed(region, st), t))
    assert not out.aborted
    # Every stage, answered or refused, is in the node's audit log.
    entries = [
        json.loads(e.body) for e in region.nodes["Leeds"].service.ledger.audit_log.export(1, 1000)
    ]
    rounds = [e for e in entries if e.get("method") == "ProtocolRound"]
    assert {e["outcome"] for e in rounds} >= {"OK", "INVALID_ARGUMENT"}
    stages = {e["stage"] for e in rounds if e["outcome"] == "OK"}
    assert stages == {
        "session",
        "advertise_set",
        "share_set",
        "consistency_request",
        "unmask_request",
    }
    assert any(e.get("message") == "secure-aggregation share paid" for e in entries)


def test_through_the_coordinator(region: region_lib.Region) -> None:
    """The analyst's client picks secure_aggregation for a combined-only template that
    allows it; the coordinator runs the session and releases the sum only."""
    digest = region_lib.published(region, T2, threshold=3)
    analyst = region.analyst()
    # The analyst checks the nodes' signed statements against keys it trusts.
    analyst.trust = region.fed.trust(region_lib.COUNCILS)
    result = analyst.run_query(digest, P2)
    assert result.verification is not None and result.verification.ok, result.verification
    assert any("secure aggregation" in n for n in result.verification.notes)
    assert result.mode == "secure_aggregation"
    assert result.released, result.withheld_reason
    assert [n.organisation for n in result.nodes if n.contributed] == sorted(region_lib.COUNCILS)
    assert not result.per_node
    assert len(result.parts) == 3 and all(p.payload == b"" for p in result.parts)
    assert 0 < result.privacy_spent["rho"] <= 0.125 * 1.001
    # Too few nodes asked for the threshold: refused before any node is called.
    with pytest.raises(Exception) as e:
        analyst.run_query(digest, P2, nodes=["Leeds", "Wakefield"])
    assert getattr(e.value, "code", "") == "FAILED_PRECONDITION"
    # Plain combined mode is refused for it, at the coordinator, costing nothing.
    with pytest.raises(Exception) as e:
        analyst.run_query(digest, P2, mode="combined")
    assert getattr(e.value, "code", "") == "FAILED_PRECONDITION"


def test_the_coordinator_reuses_node_keys_and_learns_a_changed_one(
    region: region_lib.Region,
) -> None:
    """After one session the coordinator skips the Describe round, using the keys it
    learnt; a key that no longer matches (a node rotated it) is refused at the start
    by the nodes, and the coordinator asks every node again and runs a new attempt."""
    digest = region_lib.published(region, T2, threshold=3)
    analyst = region.analyst()
    known = region.coordinator.service.fanout.node_keys
    known.clear()
    first = analyst.run_query(digest, P2)
    assert first.released, first.withheld_reason
    keys = {o: region.nodes[o].service.key.public.key_id for o in region_lib.COUNCILS}
    assert known == keys
    for stale in (SigningKey.generate().public.key_id, keys["Wakefield"]):
        known["Leeds"] = stale  # not Leeds's key (any more), or another node's
        again = analyst.run_query(
            digest, {"period_start": "2025-05-01", "period_end": "2026-03-31"}
        )
        assert again.released, again.withheld_reason
        assert known == keys


def _round_outcomes(region: region_lib.Region, org: str) -> list[dict[str, Any]]:
    log = region.nodes[org].service.ledger.audit_log.export(1, 1000)
    return [b for e in log if (b := json.loads(e.body)).get("method") == "ProtocolRound"]


def test_a_coordinator_that_substitutes_a_node_key_is_refused(
    region: region_lib.Region, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator puts a key of its own in Wakefield's place in the session roster
    (to stand in the middle). The honest nodes check every member's key against the
    federation roster their approvers signed, and refuse: nothing read, released or
    paid (a node reads its data, in the background, only once it has joined)."""
    reads: list[str] = []
    answer = secagg_node.engine.answer

    def counted(*a: Any, **kw: Any) -> Any:
        reads.append("read")
        return answer(*a, **kw)

    monkeypatch.setattr(secagg_node.engine, "answer", counted)
    t = _template(region)
    st = fedlib.sign_template(t, region.fed.approvers[:2])
    mitm = SigningKey.generate().public.key_id
    out = asyncio.run(_run(region, st, _signed(region, st), t, keys={"Wakefield": mitm}))
    assert out.aborted and out.total is None
    assert out.contributors == ()
    for honest in ("Bradford", "Leeds"):
        assert "not the one in the federation roster" in out.reasons[honest], out.reasons
        refused = [e for e in _round_outcomes(region, honest) if e["stage"] == "session"]
        assert [e["outcome"] for e in refused] == ["PERMISSION_DENIED"]
    for o in region_lib.COUNCILS:
        assert _spent(region, o) == 0.0
        assert not region.nodes[o].service.ledger.release_log()
    assert reads == []
    # The honest coordinator's session, with the roster's keys, then runs and pays.
    ok = asyncio.run(_run(region, st, _signed(region, st), t))
    assert not ok.aborted and ok.total is not None, ok.reasons
    assert len(reads) == len(region_lib.COUNCILS)  # each node read its data once


def test_a_node_without_a_federation_roster_refuses_secure_aggregation(
    tmp_path: Path,
) -> None:
    r = region_lib.start_region(tmp_path, distinct_node_keys=True, with_roster=False)
    try:
        t = _template(r)
        st = fedlib.sign_template(t, r.fed.approvers[:2])
        out = asyncio.run(_run(r, st, _signed(r, st), t))
        assert out.aborted and out.total is None
        for o in region_lib.COUNCILS:
            assert NO_ROSTER in out.reasons[o], out.reasons
            assert _spent(r, o) == 0.0
            outcomes = [e["outcome"] for e in _round_outcomes(r, o)]
            assert outcomes == ["FAILED_PRECONDITION"]
    finally:
        r.stop()


def test_a_bad_federation_roster_stops_the_node_at_start(region: region_lib.Region) -> None:
    fed = region.fed
    cfg = fedlib.node_config(fed, "Leeds", budgets=region_lib.BUDGETS)
    one = fed.write_roster(region_lib.COUNCILS, signers=1, name="one-signature.json")
    stranger = fed.write_roster(("Bradford", "Wakefield"), name="without-leeds.json")
    tampered = fed.write_roster(region_lib.COUNCILS, name="tampered.json")
    doc = json.loads(tampered.read_text())
    doc["roster"]["nodes"][0]["node_key"] = SigningKey.generate().public.key_id
    tampered.write_text(json.dumps(doc))
    cases = {
        one: "1 of the 2 trusted approver signatures",
        stranger: "does not list 'Leeds'",
        tampered: "does not verify",
        fed.root / "missing.json": "no such file",
    }
    for path, why in cases.items():
        bad = fedlib.node_config(fed, "Leeds", budgets=region_lib.BUDGETS, roster_path=path)
        assert bad.secure_aggregation.roster == path and cfg.secure_aggregation.roster is None
        with pytest.raises(startup.StartupError) as e:
            node_main.start(bad, where="leeds.toml")
        message = startup.explain(e.value) or ""
        assert message.startswith("leeds.toml: secure_aggregation.roster = "), message
        assert why in message and len(message.splitlines()) <= 2, message
