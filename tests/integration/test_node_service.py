"""A real node over mutual TLS answering reference templates 1 and 2, and refusing
every kind of bad request with its precise status, no spend and an audit entry."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest

from tessera import audit, templates
from tessera.templates.model import Mode
from tessera.wire.v1 import common_pb2, node_pb2
from tests.support import federation as fedlib

T1 = "cla-by-age-and-placement"
T2 = "referrals-by-need-and-age"
P1 = {"on_date": "2025-03-31"}
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}


def _spent(stub: Any) -> dict[str, float]:
    reply = stub.GetBudget(node_pb2.GetBudgetRequest())
    out = {}
    for d in reply.datasets:
        kind = d.budget_spent.WhichOneof("loss")
        out[d.name] = getattr(d.budget_spent, kind)
    return out


def _audit_outcomes(node: Any) -> list[str]:
    entries = node.service.ledger.audit_log.export(1, 1000)
    import json

    return [json.loads(e.body)["outcome"] for e in entries]


def test_answers_template_1_with_every_cell_and_interval(running_node: Any) -> None:
    fed, node = running_node
    stub = fedlib.node_stub(fed, node.port)
    t = fed.template(T1)
    signed = fedlib.sign_template(t, fed.approvers[:2])
    reply = stub.Execute(fedlib.execute_request(fed, signed, P1))
    a = reply.answer
    assert reply.organisation == "Leeds"
    assert [d.name for d in a.dimensions] == ["age_bracket", "placement"]
    assert len(a.cells) == 24  # 6 age brackets ("Age not recorded" too) x 4 placements
    for c in a.cells:
        assert c.ci95_low <= c.estimate <= c.ci95_high or c.suppressed
    assert a.cost.WhichOneof("loss") == "epsilon"
    assert a.cost.epsilon == pytest.approx(0.5)
    assert a.charged.epsilon == pytest.approx(0.5)
    assert not a.from_cache
    assert len(a.measures) == 1 and len(a.measures[0].values) == 24
    assert _spent(stub)["ssda903"] == pytest.approx(0.125)  # epsilon 0.5 as zCDP rho


def test_identical_question_returns_identical_answer_at_zero_cost(running_node: Any) -> None:
    fed, node = running_node
    stub = fedlib.node_stub(fed, node.port)
    signed = fedlib.sign_template(fed.template(T2), fed.approvers[1:])
    first = stub.Execute(fedlib.execute_request(fed, signed, P2)).answer
    second = stub.Execute(fedlib.execute_request(fed, signed, P2)).answer
    assert first.cost.rho == pytest.approx(0.125)
    assert second.from_cache and second.charged.rho == 0.0
    assert list(second.measures[0].values) == list(first.measures[0].values)
    assert len(first.cells) == 60  # 10 needs x 6 ages ("not recorded" cells too)
    assert _spent(stub)["cin"] == pytest.approx(0.125)


def test_retrying_the_same_request_id_never_spends_twice(running_node: Any) -> None:
    fed, node = running_node
    stub = fedlib.node_stub(fed, node.port)
    signed = fedlib.sign_template(fed.template(T1), fed.approvers[:2])
    req = fedlib.execute_request(fed, signed, P1)
    first = stub.Execute(req).answer
    again = stub.Execute(req).answer
    assert list(again.measures[0].values) == list(first.measures[0].values)
    assert again.charged.epsilon == 0.0
    assert _spent(stub)["ssda903"] == pytest.approx(0.125)  # epsilon 0.5 as zCDP rho


def _refused(stub: Any, request: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        stub.Execute(request)
    return err.value.code()


def test_refusals_have_precise_status_spend_nothing_and_are_audited(running_node: Any) -> None:
    fed, node = running_node
    stub = fedlib.node_stub(fed, node.port)
    t = fed.template(T1)
    good = fedlib.sign_template(t, fed.approvers[:2])
    S = grpc.StatusCode
    cases: list[tuple[str, Any, grpc.StatusCode]] = []

    cases.append(
        (
            "unsigned",
            fedlib.execute_request(fed, fedlib.sign_template(t, []), P1),
            S.PERMISSION_DENIED,
        )
    )
    cases.append(
        (
            "k-1 signatures",
            fedlib.execute_request(fed, fedlib.sign_template(t, fed.approvers[:1]), P1),
            S.PERMISSION_DENIED,
        )
    )
    tampered_t = dataclasses.replace(t, privacy=dataclasses.replace(t.privacy, epsilon=5.0))
    tampered = common_pb2.SignedTemplate()
    tampered.CopyFrom(good)
    tampered.canonical = templates.encode(tampered_t)
    cases.append(
        (
            "byte changed after signing (analyst signs the new digest)",
            fedlib.execute_request(fed, tampered, P1),
            S.UNAUTHENTICATED,
        )
    )
    swapped = fedlib.execute_request(fed, good, P1)
    swapped.template.canonical = templates.encode(tampered_t)
    cases.append(("template swapped under the analyst's request", swapped, S.UNAUTHENTICATED))
    cases.append(
        (
            "unknown approver",
            fedlib.execute_request(
                fed, fedlib.sign_template(t, [fed.approvers[0], fed.outsider]), P1
            ),
            S.PERMISSION_DENIED,
        )
    )
    cases.append(
        (
            "analyst not allowed",
            fedlib.execute_request(fed, good, P1, analyst=fed.outsider),
            S.PERMISSION_DENIED,
        )
    )
    expired_t = dataclasses.replace(
        t, access=dataclasses.replace(t.access, expires=date(2020, 1, 1))
    )
    cases.append(
        (
            "expired template",
            fedlib.execute_request(fed, fedlib.sign_template(expired_t, fed.approvers[:2]), P1),
            S.FAILED_PRECONDITION,
        )
    )
    cases.append(
        (
            "expired request",
            fedlib.execute_request(fed, good, P1, now=datetime.now(UTC) - timedelta(minutes=30)),
            S.FAILED_PRECONDITION,
        )
    )
    cases.append(
        (
            "parameter outside its domain",
            fedlib.execute_request(fed, good, {"on_date": "2030-01-01"}),
            S.INVALID_ARGUMENT,
        )
    )
    cases.append(
        (
            "per-node mode not permitted",
            fedlib.execute_request(
                fed,
                fedlib.sign_template(fed.template(T2), fed.approvers[:2]),
                P2,
                mode=Mode.PER_NODE,
            ),
            S.PERMISSION_DENIED,
        )
    )
    cases.append(
        (
            "not addressed to this node",
            fedlib.execute_request(fed, good, P1, audience=["Bradford"]),
            S.PERMISSION_DENIED,
        )
    )

    before = _spent(stub)
    for name, request, want in cases:
        assert _refused(stub, request) == want, name
    assert _spent(stub) == before

    # Replayed nonce: the same request body again after it was answered is an
    # idempotent retry; a different request reusing the nonce is a replay.
    first = fedlib.execute_request(fed, good, P1)
    stub.Execute(first)
    spent_after_one = _spent(stub)
    replay = fedlib.execute_request(fed, good, {"on_date": "2024-03-31"})
    from tessera import canonical, requests

    body = canonical.decode(replay.request.canonical)
    body["nonce"] = canonical.decode(first.request.canonical)["nonce"]
    replay.request.canonical = canonical.encode(body)
    replay.request.signature = fed.analyst.sign(
        b"tessera/v1/query-request\x00", replay.request.canonical
    )
    requests.verify(requests.SignedRequest(replay.request.canonical, replay.request.signature))
    assert _refused(stub, replay) == S.ALREADY_EXISTS
    assert _spent(stub) == spent_after_one

    outcomes = _audit_outcomes(node)
    for want_code in (
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "FAILED_PRECONDITION",
        "INVALID_ARGUMENT",
        "ALREADY_EXISTS",
        "OK",
    ):
        assert want_code in outcomes
    assert len(outcomes) == len(cases) + 2
    # The server is still serving.
    assert stub.GetBudget(node_pb2.GetBudgetRequest()).organisation == "Leeds"


def test_over_budget_is_refused_without_spending(running_node: Any) -> None:
    fed, node = running_node
    stub = fedlib.node_stub(fed, node.port)
    signed = fedlib.sign_template(fed.template(T1), fed.approvers[:2])
    # The children's accountant has lifetime rho 3.0; each question costs epsilon 0.5,
    # rho 0.125 in zCDP: 24 distinct questions, then refusal.
    for day in range(1, 25):
        stub.Execute(fedlib.execute_request(fed, signed, {"on_date": f"2021-03-{day:02d}"}))
    assert _refused(stub, fedlib.execute_request(fed, signed, P1)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert _spent(stub)["ssda903"] == pytest.approx(3.0)
    # An already-released answer is still free to ask again.
    again = stub.Execute(fedlib.execute_request(fed, signed, {"on_date": "2021-03-01"}))
    assert again.answer.from_cache


def test_client_roles_and_identities(running_node: Any) -> None:
    fed, node = running_node
    coord = fedlib.node_stub(fed, node.port, "coordinator")
    with pytest.raises(grpc.RpcError) as err:
        coord.ExportAudit(node_pb2.ExportAuditRequest(from_seq=1, limit=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    stranger = fedlib.node_stub(fed, node.port, "stranger")
    with pytest.raises(grpc.RpcError) as err:
        stranger.Describe(node_pb2.DescribeRequest())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    operator = fedlib.node_stub(fed, node.port, "operator")
    assert operator.ExportAudit(node_pb2.ExportAuditRequest(from_seq=1, limit=10)).entries


def test_describe_identity_only_names_the_node_and_nothing_else(running_node: Any) -> None:
    # What the coordinator asks at every secure-aggregation session: who, not budgets.
    fed, node = running_node
    coord = fedlib.node_stub(fed, node.port, "coordinator")
    full = coord.Describe(node_pb2.DescribeRequest())
    short = coord.Describe(node_pb2.DescribeRequest(identity_only=True))
    assert (short.organisation, short.node_key) == (full.organisation, full.node_key)
    assert short.node_key == node.service.key.public.key_id
    assert full.datasets and not short.datasets and not short.warnings
    stranger = fedlib.node_stub(fed, node.port, "stranger")
    with pytest.raises(grpc.RpcError) as err:
        stranger.Describe(node_pb2.DescribeRequest(identity_only=True))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_client_certificate_from_another_ca_is_refused(running_node: Any, tmp_path: Any) -> None:
    fed, node = running_node
    from tessera.tls import TlsFiles, make_federation

    make_federation(tmp_path / "other", nodes=[], coordinator="coordinator", users=[])
    material = TlsFiles.for_name(tmp_path / "other", "coordinator").load()
    # Trust the real CA for the server, but present a certificate from another CA.
    creds = grpc.ssl_channel_credentials(
        root_certificates=fed.tls("coordinator").load().ca,
        private_key=material.key,
        certificate_chain=material.cert,
    )
    with grpc.secure_channel(f"localhost:{node.port}", creds) as ch:
        stub = fedlib.node_pb2_grpc.NodeServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Describe(node_pb2.DescribeRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    ok = fedlib.node_stub(fed, node.port)
    assert ok.Describe(node_pb2.DescribeRequest()).organisation == "Leeds"


def test_audit_log_verifies_and_detects_tampering(running_node: Any) -> None:
    fed, node = running_node
    stub = fedlib.node_stub(fed, node.port)
    signed = fedlib.sign_template(fed.template(T1), fed.approvers[:2])
    stub.Execute(fedlib.execute_request(fed, signed, P1))
    db = node.service.cfg.state_dir / "ledger.sqlite"
    ok = audit.verify(db, fed.node_key.public)
    assert ok.ok, ok.problems
    with sqlite3.connect(db) as con:
        # An attacker with the file can drop the append-only guards; the chain still tells.
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            con.execute(f"DROP TRIGGER {name}")
        con.execute("UPDATE audit SET body = replace(body, 'OK', 'NO') WHERE seq = 1")
    assert not audit.verify(db, fed.node_key.public).ok
