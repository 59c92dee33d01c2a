"""A real region: three council nodes and a coordinator over mutual TLS, driven through
tessera.client the way an analyst and approvers use it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from tessera import approvals, audit, requests, templates
from tessera.client import ClientError, Progress
from tessera.coordinator.model import QueryRecord
from tessera.keys import SigningKey
from tessera.templates.model import Mode
from tessera.wire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from tests.support import coordinator as region_lib

T1 = "cla-by-age-and-placement"
T2 = "referrals-by-need-and-age"
P1 = {"on_date": "2025-03-31"}
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}


@pytest.fixture
def region(tmp_path: Path) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def _spent(region: region_lib.Region, dataset: str) -> dict[str, float]:
    out = {}
    for node in region.analyst().budgets():
        for d in node.datasets:
            if d.name == dataset:
                out[node.organisation] = d.spent
    return out


def test_approvers_publish_and_the_analyst_runs_combined_and_per_node(
    region: region_lib.Region,
) -> None:
    analyst = region.analyst()
    t = region.fed.template(T1)
    info = analyst.submit_template(t)
    assert (info.state, info.approvals, info.approvals_required) == ("pending", 0, 2)
    assert info.digest == templates.digest(t) and info.submitted_by == "Test Analyst"
    assert region.approver(0).approve(info.digest).state == "pending"
    published = region.approver(1).approve(info.digest)
    assert (published.state, published.approvals) == ("published", 2)
    assert [x.id for x in analyst.list_templates("published")] == [T1]
    assert analyst.list_templates("pending") == []
    assert analyst.get_template(T1).digest == info.digest

    seen: list[Progress] = []
    result = analyst.run_query(T1, P1, on_progress=seen.append)
    assert result.released and result.withheld_reason == ""
    assert sorted(result.nodes_answered) == list(region_lib.COUNCILS)
    assert result.nodes_missing == {}
    assert result.privacy_spent == pytest.approx({"epsilon": 0.5})
    assert result.per_node is None
    assert len(result.cells) == 24
    for c in result.cells:
        assert set(c.key) == {"age_bracket", "placement"}
        assert c.suppressed or c.ci95[0] <= c.estimate <= c.ci95[1]
    assert [p.done for p in seen] == [1, 2, 3] and {p.total for p in seen} == {3}

    shape = result.to_json_dict()
    assert set(shape) == {
        "template",
        "mode",
        "nodes_answered",
        "nodes_missing",
        "privacy_spent",
        "cells",
        "notes",
    }
    assert shape["template"] == T1 and shape["mode"] == "combined"
    assert shape["cells"][0]["ci95"] == list(result.cells[0].ci95)
    assert (
        result.to_csv().splitlines()[0]
        == "age_bracket,placement,estimate,ci95_low,ci95_high,coverage,suppressed"
    )
    assert len(result.to_rows()) == 24
    assert _spent(region, "ssda903") == pytest.approx(
        {o: 0.125 for o in region_lib.COUNCILS}
    )  # eps 0.5 = rho 0.125

    per_node = analyst.run_query(T1, {"on_date": "2024-03-31"}, mode="per_node")
    assert per_node.released and per_node.mode == "per_node"
    assert per_node.per_node is not None and sorted(per_node.per_node) == list(region_lib.COUNCILS)
    assert all(len(cells) == 24 for cells in per_node.per_node.values())
    assert {r["scope"] for r in per_node.to_rows()} == {"combined", *region_lib.COUNCILS}
    assert [n["organisation"] for n in per_node.to_json_dict()["per_node"]] == sorted(
        region_lib.COUNCILS
    )

    history = analyst.list_queries()
    assert [q.query_id for q in history] == [per_node.query_id, result.query_id]
    assert analyst.get_query(result.query_id).result == result


def test_retrying_a_request_returns_the_stored_result_and_spends_nothing(
    region: region_lib.Region,
) -> None:
    digest = region_lib.published(region, T2)
    analyst = region.analyst()
    request = requests.new_request(
        template_digest=digest,
        params=P2,
        mode=Mode.COMBINED,
        audience=list(region_lib.COUNCILS),
        analyst_key=region.fed.analyst.public.key_id,
        now=datetime.now(UTC),
    )
    signed = requests.sign(request, region.fed.analyst)
    first = analyst.submit_request(signed)
    spent = _spent(region, "cin")
    again = analyst.submit_request(signed)
    assert again == first
    assert _spent(region, "cin") == spent == pytest.approx({o: 0.125 for o in region_lib.COUNCILS})
    # The same request id with another body is a replay.
    other = requests.sign(
        requests.QueryRequest(**{**request.__dict__, "params": {**P2, "period_end": "2026-01-31"}}),
        region.fed.analyst,
    )
    with pytest.raises(ClientError) as err:
        analyst.submit_request(other)
    assert err.value.code == "ALREADY_EXISTS"


def test_a_node_down_is_named_and_quorum_decides_the_release(region: region_lib.Region) -> None:
    quorum2 = region_lib.published(region, T1, quorum=2)
    quorum3 = region_lib.published(region, T1, version=2, quorum=3)
    region.stop_node("Wakefield")
    analyst = region.analyst()
    everyone = list(region_lib.COUNCILS)

    started = time.monotonic()
    result = analyst.run_query(quorum2, P1, nodes=everyone)
    assert time.monotonic() - started < region.cfg.deadline_seconds
    assert result.released
    assert sorted(result.nodes_answered) == ["Bradford", "Leeds"]
    assert list(result.nodes_missing) == ["Wakefield"]
    assert result.nodes_missing["Wakefield"].startswith("UNAVAILABLE")
    assert {n.organisation: n.contributed for n in result.nodes} == {
        "Bradford": True,
        "Leeds": True,
        "Wakefield": False,
    }
    assert len(result.cells) == 24

    withheld = analyst.run_query(quorum3, P1, nodes=everyone)
    assert not withheld.released and withheld.cells == []
    assert "2 of the 3 nodes" in withheld.withheld_reason
    assert "Wakefield (UNAVAILABLE" in withheld.withheld_reason
    assert not any(n.contributed for n in withheld.nodes)

    health = {n.organisation: n.health for n in analyst.nodes()}
    assert health == {"Bradford": "SERVING", "Leeds": "SERVING", "Wakefield": "NOT_SERVING"}
    budgets = {b.organisation: b.status for b in analyst.budgets()}
    assert budgets == {"Bradford": "OK", "Leeds": "OK", "Wakefield": "UNAVAILABLE"}


def test_a_hung_node_is_reported_as_deadline_exceeded(tmp_path: Path) -> None:
    # A socket that accepts connections and never says a word.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        address = f"127.0.0.1:{hung.getsockname()[1]}"
        region = region_lib.start_region(
            tmp_path, ("Leeds", "Bradford"), extra_nodes={"Kirklees": address}, deadline_seconds=1.0
        )
        try:
            digest = region_lib.published(region, T1, quorum=2)
            audience = ["Bradford", "Kirklees", "Leeds"]
            started = time.monotonic()
            result = region.analyst().run_query(digest, P1, nodes=audience)
            assert time.monotonic() - started < 3.0

            # An analyst who hangs up after the first node still gets the query
            # finished and stored.
            request = requests.new_request(
                template_digest=digest,
                params={"on_date": "2024-03-31"},
                mode=Mode.COMBINED,
                audience=audience,
                analyst_key=region.fed.analyst.public.key_id,
                now=datetime.now(UTC),
            )
            signed = requests.sign(request, region.fed.analyst)
            stream = _raw_stub(region, region_lib.ANALYST).RunQuery(
                coordinator_pb2.SubmitQueryRequest(
                    request=common_pb2.SignedRequest(
                        canonical=signed.body, signature=signed.signature
                    )
                )
            )
            assert next(stream).node.status == "OK"
            stream.cancel()
            analyst = region.analyst()
            while (state := analyst.get_query(request.request_id).state) == "running":
                assert time.monotonic() - started < 10.0
                time.sleep(0.05)
            later = analyst.get_query(request.request_id).result
        finally:
            region.stop()
    assert result.released
    assert result.nodes_missing == {
        "Kirklees": "DEADLINE_EXCEEDED: no answer within the deadline of 1 s"
    }
    assert state == "released" and later is not None
    assert later.nodes_answered == ["Bradford", "Leeds"] and list(later.nodes_missing) == [
        "Kirklees"
    ]


def test_a_restart_loses_no_template_approval_or_query(region: region_lib.Region) -> None:
    digest = region_lib.published(region, T1)
    pending = region.analyst().submit_template(region.fed.template(T2)).digest
    region.approver(2).approve(pending)
    first = region.analyst().run_query(T1, P1)
    # A query the coordinator had started routing when it went down.
    request = requests.new_request(
        template_digest=digest,
        params={"on_date": "2022-03-31"},
        mode=Mode.COMBINED,
        audience=list(region_lib.COUNCILS),
        analyst_key=region.fed.analyst.public.key_id,
        now=datetime.now(UTC),
    )
    interrupted = requests.sign(request, region.fed.analyst)
    region.coordinator.service.store.begin_query(
        QueryRecord(
            request.request_id,
            "Test Analyst",
            request.analyst_key,
            "2000-01-01T00:00:00.000000Z",
            "running",
            interrupted.body,
            interrupted.signature,
            None,
        )
    )

    region.restart_coordinator()

    analyst = region.analyst()
    assert analyst.get_template(digest).state == "published"
    assert analyst.get_template(digest).approvals == 2
    assert (analyst.get_template(pending).state, analyst.get_template(pending).approvals) == (
        "pending",
        1,
    )
    assert analyst.get_query(first.query_id).result == first
    second = analyst.run_query(T1, {"on_date": "2023-03-31"})
    assert second.released
    assert analyst.get_query(request.request_id).state == "running"
    resumed = analyst.submit_request(interrupted)
    assert resumed.released and analyst.get_query(request.request_id).state == "released"
    assert [q.query_id for q in analyst.list_queries()] == [
        second.query_id,
        first.query_id,
        request.request_id,
    ]

    db = region.cfg.state_dir / "coordinator.sqlite"
    region.coordinator.stop(0)
    region.coordinator = None
    key = SigningKey.load(region.cfg.signing_key)
    verified = audit.verify(db, key.public)
    assert verified.ok, verified.problems
    assert verified.entries >= 8


def _raw_stub(region: region_lib.Region, name: str) -> coordinator_pb2_grpc.CoordinatorServiceStub:
    return coordinator_pb2_grpc.CoordinatorServiceStub(
        region.fed.channel(name, region.coordinator.port)
    )


def _code(call: Any) -> str:
    with pytest.raises((ClientError, grpc.RpcError)) as err:
        call()
    e = err.value
    return e.code if isinstance(e, ClientError) else e.code().name


def test_roles_keys_and_signatures_are_checked(region: region_lib.Region) -> None:
    analyst = region.analyst()
    t = region.fed.template(T1)
    digest = analyst.submit_template(t).digest

    # An analyst cannot approve; an approver cannot run queries; strangers get nothing.
    assert (
        _code(lambda: region.client(region_lib.ANALYST, region.fed.approvers[0]).approve(digest))
        == "PERMISSION_DENIED"
    )
    region.approver(0).approve(digest)
    region.approver(1).approve(digest)
    assert (
        _code(lambda: region.client(region_lib.APPROVERS[0], region.fed.analyst).run_query(T1, P1))
        == "PERMISSION_DENIED"
    )
    assert _code(lambda: region.client("stranger").list_templates()) == "PERMISSION_DENIED"

    # An approver must sign with their own registered key, and the signature must verify.
    stub = _raw_stub(region, region_lib.APPROVERS[2])
    others = approvals.sign(digest, region.fed.approvers[0])
    mine_bad = approvals.Approval(region.fed.approvers[2].public.key_id, others.signature)
    for approval, want in ((others, "PERMISSION_DENIED"), (mine_bad, "UNAUTHENTICATED")):
        msg = coordinator_pb2.AddApprovalRequest(
            digest=digest,
            approval=common_pb2.Approval(
                approver_key=approval.approver_key, signature=approval.signature
            ),
        )
        assert _code(lambda m=msg: stub.AddApproval(m)) == want

    # Templates: the field at fault, duplicates, unknown digests.
    assert _code(lambda: analyst.submit_template(b'{"id":"x"}')) == "INVALID_ARGUMENT"
    with pytest.raises(ClientError) as err:
        analyst.submit_template(b'{"id":"x"}')
    assert "title" in err.value.message or "version" in err.value.message
    assert _code(lambda: analyst.submit_template(t)) == "ALREADY_EXISTS"
    assert _code(lambda: analyst.get_template("0" * 64)) == "NOT_FOUND"

    # Requests: signed by someone else, tampered, unpublished template, bad parameter.
    def signed_by(
        key: SigningKey, template_digest: str = digest, params: dict[str, str] = P1
    ) -> requests.SignedRequest:
        r = requests.new_request(
            template_digest=template_digest,
            params=params,
            mode=Mode.COMBINED,
            audience=["Leeds"],
            analyst_key=key.public.key_id,
            now=datetime.now(UTC),
        )
        return requests.sign(r, key)

    assert _code(lambda: analyst.submit_request(signed_by(region.fed.outsider))) == (
        "PERMISSION_DENIED"
    )
    good = signed_by(region.fed.analyst)
    tampered = requests.SignedRequest(good.body, bytes(64))
    assert _code(lambda: analyst.submit_request(tampered)) == "UNAUTHENTICATED"
    t2 = analyst.submit_template(region.fed.template(T2)).digest
    assert _code(lambda: analyst.submit_request(signed_by(region.fed.analyst, t2, P2))) == (
        "FAILED_PRECONDITION"
    )
    assert (
        _code(
            lambda: analyst.submit_request(
                signed_by(region.fed.analyst, params={"on_date": "2030-01-01"})
            )
        )
        == "INVALID_ARGUMENT"
    )
    # T1 declares no secure-aggregation threshold (tests/integration/test_secagg.py).
    assert _code(lambda: analyst.run_query(T1, P1, nodes=["Leeds"], mode="secure_aggregation")) == (
        "FAILED_PRECONDITION"
    )
    # Another analyst's query is invisible.
    assert _code(lambda: analyst.get_query("no-such-query")) == "NOT_FOUND"
    assert analyst.list_queries() == []


FIVE_COUNCILS = ("Bradford", "Calderdale", "Kirklees", "Leeds", "Wakefield")


def test_five_councils_one_killed_quorum_4_releases_and_quorum_5_does_not(
    tmp_path: Path,
) -> None:
    region = region_lib.start_region(tmp_path, FIVE_COUNCILS, deadline_seconds=5.0)
    try:
        quorum4 = region_lib.published(region, T1, quorum=4)
        quorum5 = region_lib.published(region, T1, version=2, quorum=5)
        region.stop_node("Calderdale")
        analyst = region.analyst()

        started = time.monotonic()
        result = analyst.run_query(quorum4, P1, nodes=list(FIVE_COUNCILS))
        assert time.monotonic() - started < region.cfg.deadline_seconds
        assert result.released
        assert sorted(result.nodes_answered) == ["Bradford", "Kirklees", "Leeds", "Wakefield"]
        assert list(result.nodes_missing) == ["Calderdale"]

        withheld = analyst.run_query(quorum5, P1, nodes=list(FIVE_COUNCILS))
        assert not withheld.released and withheld.cells == []
        assert "4 of the 5 nodes" in withheld.withheld_reason
        assert "Calderdale (UNAVAILABLE" in withheld.withheld_reason
    finally:
        region.stop()
