"""Overlap counts end to end: a police node and a council node over mutual TLS, driven by
the coordinator's relay (tessera.coordinator.overlap_run) over ProtocolRound."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from tessera import answers, requests, templates
from tessera.coordinator import overlap_run
from tessera.node import privacy
from tessera.templates.model import Mode, Template
from tessera.wire.v1 import common_pb2, node_pb2_grpc
from tests.support import coordinator as region_lib
from tests.support import federation as fedlib
from tests.support import overlap as ovlib


@pytest.fixture
def region(tmp_path: Path) -> Iterator[ovlib.OverlapRegion]:
    yield from ovlib.running(tmp_path)


def signed_request(
    region: ovlib.OverlapRegion,
    st: common_pb2.SignedTemplate,
    *,
    audience: tuple[str, ...] = ovlib.ORGS,
    mode: Mode = Mode.OVERLAP,
    params: dict[str, Any] | None = None,
) -> requests.SignedRequest:
    req = requests.new_request(
        template_digest=templates.digest_of_bytes(st.canonical),
        params=params or ovlib.PARAMS,
        mode=mode,
        audience=audience,
        analyst_key=region.fed.analyst.public.key_id,
        now=datetime.now(UTC),
    )
    return requests.sign(req, region.fed.analyst)


async def drive(
    region: ovlib.OverlapRegion,
    st: common_pb2.SignedTemplate,
    signed: requests.SignedRequest,
    t: Template,
    *,
    orgs: tuple[str, ...] = ovlib.ORGS,
    **kw: Any,
) -> overlap_run.OverlapOutcome:
    creds = region.fed.tls("coordinator").load().channel_credentials()
    channels = [aio.secure_channel(f"localhost:{region.port(o)}", creds) for o in orgs]
    try:
        return await overlap_run.run(
            [(o, node_pb2_grpc.NodeServiceStub(ch)) for o, ch in zip(orgs, channels, strict=True)],
            signed_template=st,
            signed=signed,
            request_id=requests.parse(signed.body).request_id,
            counter=overlap_run.counter_index(t),
            **kw,
        )
    finally:
        for ch in channels:
            await ch.close()


def run(region: ovlib.OverlapRegion, **kw: Any) -> tuple[overlap_run.OverlapOutcome, Any]:
    t = region.template
    st = fedlib.sign_template(t, region.fed.approvers[:2])
    audience = kw.get("orgs", ovlib.ORGS)
    signed = kw.pop("signed", None) or signed_request(region, st, audience=audience)
    return asyncio.run(drive(region, st, signed, t, **kw)), signed


def spent(region: ovlib.OverlapRegion, org: str) -> float:
    return sum(r.rho for r in region.nodes[org].service.ledger.release_log())


def audit(region: ovlib.OverlapRegion, org: str) -> list[dict[str, Any]]:
    log = region.nodes[org].service.ledger.audit_log
    return [json.loads(e.body) for e in log.export(1, 10_000)]


def test_exact_counts_with_noise_off(region: ovlib.OverlapRegion) -> None:
    for n in region.nodes.values():
        n.service.overlap_exact_for_tests = True  # test-only: no noise (still paid)
    out, _ = run(region)
    assert not out.aborted, (out.aborted, out.reasons)
    assert out.release is not None
    payload = json.loads(out.release)
    assert [c["estimate"] for c in payload["cells"]] == list(ovlib.EXACT)
    # The small-overlap guard: a cell below the template's minimum (5) is not shown.
    assert [c["suppressed"] for c in payload["cells"]] == [v < 5 for v in ovlib.EXACT]
    assert payload["exact"] is True
    assert payload["not_linkable"] == {ovlib.POLICE: [ovlib.NO_NUMBER], ovlib.COUNCIL: [0] * 6}


def test_noisy_release_is_signed_and_paid_before_blinding(region: ovlib.OverlapRegion) -> None:
    before = {o: spent(region, o) for o in ovlib.ORGS}
    out, signed = run(region)
    assert not out.aborted, (out.aborted, out.reasons)
    assert out.release is not None
    payload = json.loads(out.release)
    scale = privacy.overlap_scale(1.0)
    for cell, truth in zip(payload["cells"], ovlib.EXACT, strict=True):
        if not cell["suppressed"]:
            assert abs(cell["estimate"] - truth) <= 30 * scale  # P(miss) < 1e-6 per cell
            assert cell["ci95_low"] <= cell["estimate"] <= cell["ci95_high"]
        assert cell["coverage"] >= 0.95
    view, own = privacy.overlap_charge(1.0)
    rho = privacy.compose_rho([privacy.pure_to_rho(view), privacy.pure_to_rho(own)])
    for org in ovlib.ORGS:
        assert spent(region, org) - before[org] == pytest.approx(rho)
        body, sig = out.statements[org]
        st = answers.verify(
            answers.SignedStatement(body, sig), region.fed.key_of(org).public.key_id
        )
        assert st.request_id == out.session_id and st.request_hash == signed.hash
        assert st.cost_kind == "epsilon" and st.cost == pytest.approx(view + own)
        if org == out.counter:
            assert st.payload_sha256 == answers.payload_digest(out.release)
        # Audit order: the charge is paid (committed) before the START step's reply, the
        # only one that carries this party's own blinded sets.
        entries = [e for e in audit(region, org) if e.get("session_id") == out.session_id]
        messages = [e["message"] for e in entries]
        paid = messages.index("overlap charge paid")
        assert messages.index("overlap step start") > paid
        assert "overlap step open" in messages[:paid]
        assert "overlap step close" in messages  # the session's keys are forgotten
    assert out.counter == ovlib.POLICE  # the first party that is not the noise party


def test_same_query_again_is_a_new_session_and_charge(region: ovlib.OverlapRegion) -> None:
    t = region.template
    st = fedlib.sign_template(t, region.fed.approvers[:2])
    signed = signed_request(region, st)
    first = asyncio.run(drive(region, st, signed, t))
    assert not first.aborted
    paid = spent(region, ovlib.COUNCIL)
    again = asyncio.run(drive(region, st, signed, t))  # the same session id: refused, unpaid
    assert again.aborted and again.release is None
    assert "already joined" in again.aborted
    assert spent(region, ovlib.COUNCIL) == paid
    retry = asyncio.run(drive(region, st, signed, t, attempt=2))
    assert not retry.aborted and retry.release is not None
    assert retry.session_id != first.session_id
    assert spent(region, ovlib.COUNCIL) > paid


def test_through_the_coordinator_a_verified_release(tmp_path: Path) -> None:
    r = ovlib.start(tmp_path)
    region = ovlib.with_coordinator(r, deadline_seconds=20.0)
    try:
        ovlib.publish(region, r.template)
        analyst = region.client(region_lib.ANALYST, r.fed.analyst)
        analyst.trust = r.fed.trust(ovlib.ORGS)
        result = analyst.run_query(r.template.id, ovlib.PARAMS)
        assert result.released and result.mode == "overlap"
        assert result.verification is not None and result.verification.ok
        labels = [c.key["age_bracket"] for c in result.cells]
        assert labels == [*r.template.group_by[0].labels]
        assert result.privacy_spent["epsilon"] == pytest.approx(sum(privacy.overlap_charge(1.0)))
        assert any("not linkable" in n for n in result.notes)
        # Stored in the coordinator's history, and verifiable later.
        assert analyst.verify_query(result.query_id).ok
    finally:
        region.stop()


def test_replies_are_paged_within_a_small_message_limit(tmp_path: Path) -> None:
    r = ovlib.start(tmp_path, max_message_bytes=16 * 1024)
    try:
        for n in r.nodes.values():
            n.service.overlap_exact_for_tests = True
        out, _ = run(r)
        assert not out.aborted, out.aborted
        assert out.release is not None
        assert [c["estimate"] for c in json.loads(out.release)["cells"]] == list(ovlib.EXACT)
        pulls = [e for e in audit(r, ovlib.COUNCIL) if e.get("stage") == "pull"]
        assert pulls  # the council's six sub-sets did not fit one reply
    finally:
        r.stop()


def test_three_agencies_at_least_two_exact(tmp_path: Path) -> None:
    r = ovlib.start(tmp_path, orgs=ovlib.THREE)
    try:
        for n in r.nodes.values():
            n.service.overlap_exact_for_tests = True
        out, _ = run(r, orgs=ovlib.THREE)
        assert not out.aborted, out.aborted
        assert out.counter == ovlib.TRUST  # the first party that is not the noise party
        assert out.release is not None
        cells = json.loads(out.release)["cells"]
        assert [c["estimate"] for c in cells] == list(ovlib.EXACT_3)
        assert cells[-1]["label"] == "not in cin"
    finally:
        r.stop()
