"""Malformed text in every text field: a lone surrogate (the JSON escape \\ud800) and
invalid UTF-8 bytes, in each string of the signed template and the signed request (with
valid signatures over the bad bytes, and with all-zero ones), and invalid UTF-8 in the
protobuf string fields. Each is INVALID_ARGUMENT, never INTERNAL, costs nothing, and
leaves exactly one audit entry; the node and coordinator keep serving."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tessera import canonical
from tessera.wire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc, node_pb2
from tests.adversarial import support as sp
from tests.support import coordinator as region_lib

MARK = "QQmarkQQ"
BAD: dict[str, bytes] = {
    "lone surrogate": b"\\ud800",
    "low surrogate": b"\\udfff",
    "invalid utf-8": b"\xff\xfe",
    "utf-8 encoded surrogate": b"\xed\xa0\x80",
    "truncated utf-8": b"\xe2\x82",
}


def _string_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _string_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_paths(v, (*path, i))


def _corrupt(doc: dict[str, Any], path: tuple[Any, ...], bad: bytes) -> bytes:
    """The canonical bytes of `doc`, with the string at `path` replaced by bad text."""
    copy: Any = canonical.decode(canonical.encode(doc))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = MARK
    return canonical.encode(copy).replace(MARK.encode(), bad)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sp.Cluster]:
    with sp.cluster(tmp_path_factory.mktemp("unicode")) as c:
        yield c


def _expect_refused_and_audited(c: sp.Cluster, send: Any, what: str) -> None:
    before = sp.audit_seq(c)
    with pytest.raises(grpc.RpcError) as e:
        send()
    code, details = e.value.code(), e.value.details()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (what, code, details)
    bodies = sp.audit_bodies(c, from_seq=before + 1)
    assert len(bodies) == 1, what
    assert bodies[0]["outcome"] == "INVALID_ARGUMENT" and bodies[0]["cost"] == 0


def _send(c: sp.Cluster, request: node_pb2.ExecuteRequest) -> Any:
    stub = c.stub()
    return lambda: stub.Execute(request, timeout=sp.TIMEOUT)


def test_bad_text_in_every_field_of_a_signed_template_or_request(node: sp.Cluster) -> None:
    fed = node.fed
    template = sp.template_dict(fed)
    good = sp.signed_template(template, fed.approvers[:2])
    body = sp.request_body(fed, good.canonical, sp.P1)
    spent = sp.spent(node)
    sent = 0
    for path in _string_paths(template):
        for name, bad in BAD.items():
            data = _corrupt(template, path, bad)
            st = sp.signed_template(data, fed.approvers[:2])
            req_body = sp.request_body(fed, st.canonical, sp.P1)
            request = node_pb2.ExecuteRequest(
                template=st, request=sp.signed_request(req_body, fed.analyst)
            )
            _expect_refused_and_audited(node, _send(node, request), f"template {path} {name}")
            sent += 1
    for path in _string_paths(body):
        for name, bad in BAD.items():
            data = _corrupt(body, path, bad)
            for signature in ("analyst", "zero"):
                signed = sp.signed_request(data, fed.analyst)
                if signature == "zero":
                    signed = common_pb2.SignedRequest(canonical=data, signature=bytes(64))
                request = node_pb2.ExecuteRequest(template=good, request=signed)
                what = f"request {path} {name} {signature}"
                _expect_refused_and_audited(node, _send(node, request), what)
                sent += 1
    assert sent > 300
    assert sp.spent(node) == spent
    assert sp.serving(node)


def test_invalid_utf8_in_protobuf_string_fields_is_refused_and_audited(
    node: sp.Cluster,
) -> None:
    fed = node.fed
    valid = sp.execute(fed, sp.template_dict(fed), sp.P1)
    marked = node_pb2.ExecuteRequest()
    marked.CopyFrom(valid)
    marked.template.approvals[0].approver_key = MARK
    raw = marked.SerializeToString()
    raw_execute = node.raw("Execute")
    for name, bad in BAD.items():
        if bad.startswith(b"\\"):
            continue  # a JSON escape is valid UTF-8: only bytes matter to protobuf
        payload = raw.replace(MARK.encode(), bad.ljust(len(MARK), b"\xff"))
        _expect_refused_and_audited(node, lambda p=payload: raw_execute(p, timeout=30), name)
    assert sp.serving(node)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path_factory.mktemp("unicode-region"))
    try:
        yield r
    finally:
        r.stop()


def _coordinator_audit_count(region: region_lib.Region) -> int:
    last = region.coordinator.service.store.audit_log.last()
    return 0 if last is None else last.seq


def test_the_coordinator_refuses_and_audits_bad_text(region: region_lib.Region) -> None:
    fed = region.fed
    channel = grpc.secure_channel(
        region.address, fed.tls(region_lib.ANALYST).load().channel_credentials()
    )
    stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
    try:
        template = sp.template_dict(fed)
        good = canonical.encode(template)
        body = sp.request_body(fed, good, sp.P1, audience=region_lib.COUNCILS)
        cases: list[tuple[str, Any]] = []
        for path in list(_string_paths(template))[:12]:
            data = _corrupt(template, path, BAD["lone surrogate"])
            cases.append(
                (
                    f"SubmitTemplate {path}",
                    lambda d=data: stub.SubmitTemplate(
                        coordinator_pb2.SubmitTemplateRequest(canonical=d), timeout=30
                    ),
                )
            )
        for path in _string_paths(body):
            for bad in (BAD["lone surrogate"], BAD["invalid utf-8"]):
                data = _corrupt(body, path, bad)
                signed = common_pb2.SignedRequest(canonical=data, signature=bytes(64))
                cases.append(
                    (
                        f"RunQuery {path}",
                        lambda s=signed: list(
                            stub.RunQuery(coordinator_pb2.SubmitQueryRequest(request=s), timeout=30)
                        ),
                    )
                )
        for what, call in cases:
            before = _coordinator_audit_count(region)
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, e.value.details())
            assert _coordinator_audit_count(region) == before + 1, what
        # Still serving.
        stub.ListTemplates(coordinator_pb2.ListTemplatesRequest(), timeout=30)
    finally:
        channel.close()
