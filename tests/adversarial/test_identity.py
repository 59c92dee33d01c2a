"""Identity: who may connect, who may call what, and whose signatures count.

Two real nodes (Leeds and Bradford) of one federation, over mutual TLS. Connections
without an acceptable certificate fail in the handshake (UNAVAILABLE, and nothing
reaches the node, so there is nothing to audit); every refusal after the handshake
has its precise status, spends nothing on either node, is in the audit log, and
both nodes keep serving.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from tessera import canonical, keys, requests, templates
from tessera.clock import isoformat, parse_iso
from tessera.keys import SigningKey
from tessera.templates.model import Mode
from tessera.tls import TlsFiles, make_certificate, make_federation
from tessera.wire.v1 import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
)
from tests.adversarial import support as sp
from tests.support import coordinator as region_lib
from tests.support import federation as fedlib

S = grpc.StatusCode
BOTH = ("Bradford", "Leeds")


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sp.Cluster]:
    root = tmp_path_factory.mktemp("identity")
    budgets = {"ssda903": (100.0, None), "cin": (None, 100.0)}
    with sp.cluster(root, names=("Leeds", "Bradford"), budgets=budgets) as c:
        yield c


def _good(fed: fedlib.Federation, **request: Any) -> node_pb2.ExecuteRequest:
    return sp.execute(fed, sp.template_dict(fed, sp.T1), sp.P1, **request)


def _body(request: node_pb2.ExecuteRequest) -> dict[str, Any]:
    body: dict[str, Any] = canonical.decode(request.request.canonical)
    return body


# -- connections that must fail ---------------------------------------------------------


def _no_certificate(c: sp.Cluster, tmp: Path, name: str) -> Any:
    return grpc.ssl_channel_credentials(root_certificates=c.fed.tls("coordinator").load().ca)


def _other_ca(c: sp.Cluster, tmp: Path, name: str) -> Any:
    # The name of a real client, issued by a CA the server does not trust.
    make_federation(tmp / "other", nodes=[], coordinator=None, users=[name])
    return _creds(c, TlsFiles.for_name(tmp / "other", name))


def _window(start: timedelta, end: timedelta) -> Callable[[sp.Cluster, Path, str], Any]:
    def make(c: sp.Cluster, tmp: Path, name: str) -> Any:
        now = datetime.now(UTC)
        files = make_certificate(
            c.fed.certs.ca, name, tmp, not_before=now + start, not_after=now + end
        )
        return _creds(c, files)

    return make


def _server_only(c: sp.Cluster, tmp: Path, name: str) -> Any:
    files = make_certificate(
        c.fed.certs.ca, name, tmp, client=False, server=True, server_names=["localhost"]
    )
    return _creds(c, files)


def _creds(c: sp.Cluster, files: TlsFiles) -> Any:
    material = files.load()
    return grpc.ssl_channel_credentials(
        root_certificates=c.fed.tls("coordinator").load().ca,
        private_key=material.key,
        certificate_chain=material.cert,
    )


BAD_CONNECTIONS = {
    "no-client-certificate": _no_certificate,
    "certificate-from-another-ca": _other_ca,
    "expired-certificate": _window(timedelta(days=-30), timedelta(days=-1)),
    "not-yet-valid-certificate": _window(timedelta(days=1), timedelta(days=30)),
    "server-only-certificate": _server_only,
}


@pytest.mark.parametrize("kind", sorted(BAD_CONNECTIONS))
def test_connections_that_must_fail(two: sp.Cluster, tmp_path: Path, kind: str) -> None:
    # Certificates in the name of the node's real client, the coordinator.
    creds = BAD_CONNECTIONS[kind](two, tmp_path, "coordinator")
    before, seq = sp.spent(two), sp.audit_seq(two)
    request = _good(two.fed)
    port = two.nodes["Leeds"].port
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        stub = node_pb2_grpc.NodeServiceStub(ch)
        for rpc, message in (("Describe", node_pb2.DescribeRequest()), ("Execute", request)):
            code, details, _ = sp.call(getattr(stub, rpc), message)
            assert code == S.UNAVAILABLE, f"{rpc}: {code.name} {details}"
    # The handshake failed: nothing reached the node, so nothing was spent or audited.
    assert sp.spent(two) == before and sp.audit_seq(two) == seq
    assert sp.serving(two)


# -- right CA, wrong role ------------------------------------------------------------------

ALL_CALLS = {
    "Describe": node_pb2.DescribeRequest(),
    "GetBudget": node_pb2.GetBudgetRequest(),
    "ProtocolRound": node_pb2.ProtocolRoundRequest(session_id="s", round=1),
    "ExportAudit": node_pb2.ExportAuditRequest(from_seq=1, limit=10),
}


def test_the_coordinator_certificate_cannot_call_admin_methods(two: sp.Cluster) -> None:
    details = sp.assert_refused(
        two, "ExportAudit", ALL_CALLS["ExportAudit"], S.PERMISSION_DENIED, as_name="coordinator"
    )
    assert "ExportAudit" in details
    last = sp.audit_bodies(two)[-1]
    assert last["method"] == "ExportAudit" and last["actor"]["peer"] == "coordinator"
    # The operator's certificate may.
    assert two.stub(as_name="operator").ExportAudit(ALL_CALLS["ExportAudit"]).entries


@pytest.mark.parametrize("who", ["stranger", "Bradford"])
@pytest.mark.parametrize("rpc", [*sorted(ALL_CALLS), "Execute"])
def test_a_certificate_of_the_federation_not_in_the_node_config(
    two: sp.Cluster, who: str, rpc: str
) -> None:
    """`stranger` is a user of the federation CA, `Bradford` another node: neither is
    a client of Leeds."""
    request = _good(two.fed) if rpc == "Execute" else ALL_CALLS[rpc]
    sp.assert_refused(two, rpc, request, S.PERMISSION_DENIED, as_name=who)
    assert sp.audit_bodies(two)[-1]["actor"]["peer"] == who


# -- forged and altered signatures --------------------------------------------------------


def _resign(sign: Callable[[fedlib.Federation, bytes], bytes]) -> Callable[..., Any]:
    def build(fed: fedlib.Federation) -> node_pb2.ExecuteRequest:
        r = _good(fed)
        r.request.signature = sign(fed, r.request.canonical)
        return r

    return build


def _altered(edit: Callable[[dict[str, Any]], None]) -> Callable[..., Any]:
    """A valid request whose body is changed after the analyst signed it; the old
    signature is kept."""

    def build(fed: fedlib.Federation) -> node_pb2.ExecuteRequest:
        r = _good(fed)
        body = _body(r)
        edit(body)
        r.request.canonical = canonical.encode(body)
        return r

    return build


def _outsider_as_analyst(fed: fedlib.Federation) -> node_pb2.ExecuteRequest:
    return _good(fed, analyst=fed.outsider)


def _forged_approval(fed: fedlib.Federation) -> node_pb2.ExecuteRequest:
    r = _good(fed)
    r.template.approvals[0].signature = bytes(64)
    return r


def _approval_of_another_template(fed: fedlib.Federation) -> node_pb2.ExecuteRequest:
    r = _good(fed)
    other = sp.signed_template(sp.template_dict(fed, sp.T2), fed.approvers[:2])
    del r.template.approvals[:]
    r.template.approvals.extend(other.approvals)
    return r


def _non_canonical_body(fed: fedlib.Federation) -> node_pb2.ExecuteRequest:
    r = _good(fed)
    spaced = json.dumps(_body(r), sort_keys=True).encode()
    r.request.canonical = spaced
    r.request.signature = fed.analyst.sign(keys.QUERY_REQUEST, spaced)
    return r


FORGERIES: dict[str, tuple[Callable[..., Any], grpc.StatusCode]] = {
    "random-signature": (_resign(lambda fed, b: bytes(range(64))), S.UNAUTHENTICATED),
    "empty-signature": (_resign(lambda fed, b: b""), S.UNAUTHENTICATED),
    "signed-by-another-key": (
        _resign(lambda fed, b: fed.outsider.sign(keys.QUERY_REQUEST, b)),
        S.UNAUTHENTICATED,
    ),
    "signed-under-the-approval-domain": (
        _resign(lambda fed, b: fed.analyst.sign(keys.TEMPLATE_APPROVAL, b)),
        S.UNAUTHENTICATED,
    ),
    "changed-parameters-old-signature": (
        _altered(lambda b: b["params"].update(on_date="2024-03-31")),
        S.UNAUTHENTICATED,
    ),
    "changed-mode-old-signature": (
        _altered(lambda b: b.update(mode=Mode.PER_NODE.value)),
        S.UNAUTHENTICATED,
    ),
    "widened-audience-old-signature": (
        _altered(lambda b: b.update(audience=list(BOTH))),
        S.UNAUTHENTICATED,
    ),
    "extended-validity-old-signature": (
        _altered(
            lambda b: b.update(
                expires_at=isoformat(parse_iso(b["expires_at"]) + timedelta(minutes=20))
            )
        ),
        S.UNAUTHENTICATED,
    ),
    "swapped-analyst-key-old-signature": (
        _altered(lambda b: b.update(analyst_key=SigningKey.generate().public.key_id)),
        S.UNAUTHENTICATED,
    ),
    "valid-signature-of-an-analyst-the-template-does-not-allow": (
        _outsider_as_analyst,
        S.PERMISSION_DENIED,
    ),
    "forged-approval-of-a-trusted-approver": (_forged_approval, S.UNAUTHENTICATED),
    "approvals-of-another-template": (_approval_of_another_template, S.UNAUTHENTICATED),
    "signed-but-not-canonical-body": (_non_canonical_body, S.INVALID_ARGUMENT),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_forged_or_altered_signatures(two: sp.Cluster, case: str) -> None:
    build, want = FORGERIES[case]
    sp.assert_refused(two, "Execute", build(two.fed), want)


# -- replays ------------------------------------------------------------------------------


def test_a_request_for_one_node_replayed_to_another(two: sp.Cluster) -> None:
    fed = two.fed
    request = sp.execute(fed, sp.template_dict(fed, sp.T2), sp.P2, audience=["Leeds"])
    answer = two.stub("Leeds").Execute(request).answer
    assert answer.charged.rho > 0
    details = sp.assert_refused(two, "Execute", request, S.PERMISSION_DENIED, node="Bradford")
    assert "not addressed to this node" in details


def test_a_request_for_both_nodes_replayed_to_the_same_node_costs_nothing(
    two: sp.Cluster,
) -> None:
    fed = two.fed
    t = sp.template_dict(fed, sp.T1)
    t["id"] = "replay-probe"  # a template of its own, so its first answer is new
    request = sp.execute(fed, t, {"on_date": "2023-03-31"}, audience=list(BOTH))
    first = {n: two.stub(n).Execute(request).answer for n in BOTH}
    assert all(a.charged.epsilon > 0 and not a.from_cache for a in first.values())
    spent = {n: sp.spent(two, n) for n in BOTH}
    for n in BOTH:
        seq = sp.audit_seq(two, n)
        again = two.stub(n).Execute(request).answer  # the exact same bytes
        assert again.from_cache and again.charged.epsilon == 0.0
        assert list(again.measures[0].values) == list(first[n].measures[0].values)
        assert [c.estimate for c in again.cells] == [c.estimate for c in first[n].cells]
        entry = sp.audit_bodies(two, n, from_seq=seq + 1)[-1]
        assert entry["outcome"] == "OK" and entry["cost"] == 0.0 and entry["cached"]
    assert {n: sp.spent(two, n) for n in BOTH} == spent


def test_a_nonce_reused_for_a_different_request_is_a_replay(two: sp.Cluster) -> None:
    fed = two.fed
    first = _good(fed)
    two.stub().Execute(first)
    body = _body(sp.execute(fed, sp.template_dict(fed, sp.T1), {"on_date": "2022-03-31"}))
    body["nonce"] = _body(first)["nonce"]
    replay = node_pb2.ExecuteRequest(
        template=first.template, request=sp.signed_request(body, fed.analyst)
    )
    sp.assert_refused(two, "Execute", replay, S.ALREADY_EXISTS)


# -- a coordinator running a template its approvers never signed ------------------------

COORDINATOR_KEY = SigningKey.generate()


def _approved_by(signers: Callable[[fedlib.Federation], list[SigningKey]]) -> Callable[..., Any]:
    def build(fed: fedlib.Federation) -> node_pb2.ExecuteRequest:
        return sp.execute(fed, sp.template_dict(fed, sp.T1), sp.P1, signers=signers(fed))

    return build


def _raised_after_approval(analyst_signs_new: bool) -> Callable[..., Any]:
    """The coordinator raises epsilon after the approvers signed, and keeps their
    approvals. Either the analyst's request still names the approved digest, or the
    analyst was shown (and signed for) the altered template."""

    def build(fed: fedlib.Federation) -> node_pb2.ExecuteRequest:
        approved = sp.template_dict(fed, sp.T1)
        r = sp.execute(fed, approved, sp.P1)
        altered = dict(approved, privacy={"epsilon": 9.0})
        r.template.canonical = canonical.encode(altered)
        if analyst_signs_new:
            body = sp.request_body(fed, r.template.canonical, sp.P1)
            r.request.CopyFrom(sp.signed_request(body, fed.analyst))
        return r

    return build


UNAPPROVED: dict[str, tuple[Callable[..., Any], grpc.StatusCode]] = {
    "no-approvals": (_approved_by(lambda fed: []), S.PERMISSION_DENIED),
    "untrusted-approvers": (
        _approved_by(lambda fed: [fed.outsider, SigningKey.generate()]),
        S.PERMISSION_DENIED,
    ),
    "the-coordinators-own-key": (_approved_by(lambda fed: [COORDINATOR_KEY]), S.PERMISSION_DENIED),
    "one-trusted-and-the-coordinator": (
        _approved_by(lambda fed: [fed.approvers[0], COORDINATOR_KEY]),
        S.PERMISSION_DENIED,
    ),
    "one-trusted-approver-twice": (
        _approved_by(lambda fed: [fed.approvers[0], fed.approvers[0]]),
        S.PERMISSION_DENIED,
    ),
    "one-trusted-and-the-analyst-itself": (
        _approved_by(lambda fed: [fed.approvers[0], fed.analyst]),
        S.PERMISSION_DENIED,
    ),
    "altered-after-approval": (_raised_after_approval(False), S.UNAUTHENTICATED),
    "altered-after-approval-analyst-signed-the-altered-one": (
        _raised_after_approval(True),
        S.UNAUTHENTICATED,
    ),
}


@pytest.mark.parametrize("case", sorted(UNAPPROVED))
def test_the_coordinator_cannot_run_an_unapproved_template(two: sp.Cluster, case: str) -> None:
    build, want = UNAPPROVED[case]
    sp.assert_refused(two, "Execute", build(two.fed), want)


def test_approvals_bind_the_exact_bytes_of_the_template(two: sp.Cluster) -> None:
    """Approvals bind the exact canonical bytes: the same template with its digest's
    approvals but a changed description, reworded by the coordinator, is refused."""
    fed = two.fed
    approved = sp.template_dict(fed, sp.T1)
    st = sp.signed_template(approved, fed.approvers[:2])
    reworded = dataclasses.replace(
        templates.parse_canonical(st.canonical), description="Same question, honest."
    )
    tampered = common_pb2.SignedTemplate(
        canonical=templates.encode(reworded), approvals=st.approvals
    )
    body = sp.request_body(fed, tampered.canonical, sp.P1)
    request = node_pb2.ExecuteRequest(
        template=tampered, request=sp.signed_request(body, fed.analyst)
    )
    sp.assert_refused(two, "Execute", request, S.UNAUTHENTICATED)


# -- the coordinator, as a server ---------------------------------------------------------


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path_factory.mktemp("identity-region"))
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def digest(region: region_lib.Region) -> str:
    """Template 1, submitted and approved by two of the region's approvers."""
    return region_lib.published(region, sp.T1)


def _region_spent(r: region_lib.Region) -> dict[str, float]:
    return {
        org: n.service.ledger.spent("ssda903", 1, "epsilon")
        + n.service.ledger.spent("cin", 1, "rho")
        for org, n in r.nodes.items()
    }


def _coordinator_call(
    r: region_lib.Region, who: str | Any, rpc: str, request: Any
) -> tuple[grpc.StatusCode, str]:
    creds = who if not isinstance(who, str) else r.fed.tls(who).load().channel_credentials()
    with grpc.secure_channel(r.address, creds) as ch:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(ch)
        try:
            reply = getattr(stub, rpc)(request, timeout=sp.TIMEOUT)
            if rpc == "RunQuery":
                list(reply)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""
    return S.OK, ""


def _coordinator_refused(
    r: region_lib.Region, who: str | Any, rpc: str, request: Any, want: grpc.StatusCode
) -> None:
    """The precise status, nothing spent on any node, the refusal in the coordinator's
    audit log (unless the handshake failed), and the coordinator still serving."""
    log = r.coordinator.service.store.audit_log
    seq = log.last().seq if log.last() else 0
    before = _region_spent(r)
    code, details = _coordinator_call(r, who, rpc, request)
    assert code == want, f"{rpc}: {code.name} {details!r}"
    assert not sp.unsafe_chars(details)
    assert _region_spent(r) == before
    outcomes = [json.loads(e.body)["outcome"] for e in log.export(seq + 1, 1000)]
    if want == S.UNAVAILABLE:
        assert outcomes == [], "nothing reaches the coordinator without a handshake"
    else:
        assert want.name in outcomes, outcomes
    assert _coordinator_call(r, region_lib.ANALYST, "ListNodes", LIST_NODES)[0] == S.OK


LIST_NODES = coordinator_pb2.ListNodesRequest()


@pytest.mark.parametrize("kind", sorted(BAD_CONNECTIONS))
def test_connections_to_the_coordinator_that_must_fail(
    region: region_lib.Region, tmp_path: Path, kind: str
) -> None:
    # Certificates in the analyst's name: with a good certificate ListNodes is allowed,
    # so the failure is the certificate's, not the role's.
    creds = BAD_CONNECTIONS[kind](sp.Cluster(region.fed), tmp_path, region_lib.ANALYST)
    _coordinator_refused(region, creds, "ListNodes", LIST_NODES, S.UNAVAILABLE)


@pytest.mark.parametrize(
    ("who", "rpc", "want"),
    [
        ("stranger", "ListNodes", S.PERMISSION_DENIED),
        ("Leeds", "ListTemplates", S.PERMISSION_DENIED),  # a node's certificate
        ("coordinator", "GetBudgets", S.PERMISSION_DENIED),  # its own server certificate
        (region_lib.ANALYST, "AddApproval", S.PERMISSION_DENIED),
        (region_lib.APPROVERS[0], "RunQuery", S.PERMISSION_DENIED),
    ],
)
def test_coordinator_roles(region: region_lib.Region, who: str, rpc: str, want: Any) -> None:
    requests_by_rpc = {
        "ListNodes": LIST_NODES,
        "ListTemplates": coordinator_pb2.ListTemplatesRequest(),
        "GetBudgets": coordinator_pb2.GetBudgetsRequest(),
        "AddApproval": coordinator_pb2.AddApprovalRequest(digest="0" * 64),
        "RunQuery": coordinator_pb2.SubmitQueryRequest(),
    }
    _coordinator_refused(region, who, rpc, requests_by_rpc[rpc], want)


def _run_query(
    r: region_lib.Region, digest: str, sign: Callable[[bytes], bytes], **edit: Any
) -> Any:
    body = requests.new_request(
        template_digest=digest,
        params=sp.P1,
        mode=Mode.COMBINED,
        audience=region_lib.COUNCILS,
        analyst_key=r.fed.analyst.public.key_id,
        now=datetime.now(UTC),
    ).to_dict()
    body.update(edit)
    raw = canonical.encode(body)
    return coordinator_pb2.SubmitQueryRequest(
        request=common_pb2.SignedRequest(canonical=raw, signature=sign(raw))
    )


def test_a_forged_analyst_signature_is_refused_by_the_coordinator(
    region: region_lib.Region, digest: str
) -> None:
    request = _run_query(
        region, digest, lambda raw: region.fed.outsider.sign(keys.QUERY_REQUEST, raw)
    )
    _coordinator_refused(region, region_lib.ANALYST, "RunQuery", request, S.UNAUTHENTICATED)


def test_a_request_under_another_persons_key_is_refused_by_the_coordinator(
    region: region_lib.Region, digest: str
) -> None:
    approver = region.fed.approvers[0]
    request = _run_query(
        region,
        digest,
        lambda raw: approver.sign(keys.QUERY_REQUEST, raw),
        analyst_key=approver.public.key_id,
    )
    _coordinator_refused(region, region_lib.ANALYST, "RunQuery", request, S.PERMISSION_DENIED)
