"""Helpers for the adversarial suite: real nodes over mutual TLS, hostile but
correctly signed templates and requests, raw gRPC payloads, and the checks every
refusal must pass (precise status, nothing spent, audited, still serving, no echo)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import strategies as st

from tessera import approvals, canonical, keys, requests, templates
from tessera.keys import SigningKey
from tessera.node.main import RunningNode, start
from tessera.templates import parse as template_parse
from tessera.templates.model import Mode
from tessera.wire.v1 import common_pb2, node_pb2
from tests.support import federation as fedlib

S = grpc.StatusCode
SERVICE = "tessera.wire.v1.NodeService"
RPCS = ("Describe", "Execute", "GetBudget", "ProtocolRound", "ExportAudit")
# design.md's list of statuses; UNIMPLEMENTED is documented for ProtocolRound and for the
# reserved secure-aggregation mode of Execute.
DOCUMENTED = frozenset(
    {
        S.OK,
        S.UNAUTHENTICATED,
        S.PERMISSION_DENIED,
        S.INVALID_ARGUMENT,
        S.FAILED_PRECONDITION,
        S.RESOURCE_EXHAUSTED,
        S.ALREADY_EXISTS,
        S.DEADLINE_EXCEEDED,
        S.UNAVAILABLE,
    }
)
ALLOWED = {
    "Describe": DOCUMENTED,
    "GetBudget": DOCUMENTED,
    "ExportAudit": DOCUMENTED,
    "Execute": DOCUMENTED | {S.UNIMPLEMENTED},
    "ProtocolRound": DOCUMENTED | {S.UNIMPLEMENTED},
}
T1 = "cla-by-age-and-placement"
T2 = "referrals-by-need-and-age"
P1 = {"on_date": "2025-03-31"}
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}
TIMEOUT = 20.0


@dataclass
class Cluster:
    """A federation (CA, keys, data) and real nodes serving it."""

    fed: fedlib.Federation
    nodes: dict[str, RunningNode] = field(default_factory=dict)
    _channels: dict[tuple[str, str], grpc.Channel] = field(default_factory=dict)

    def channel(self, node: str = "Leeds", as_name: str = "coordinator") -> grpc.Channel:
        key = (node, as_name)
        if key not in self._channels:
            self._channels[key] = self.fed.channel(as_name, self.nodes[node].port)
        return self._channels[key]

    def stub(self, node: str = "Leeds", as_name: str = "coordinator") -> Any:
        return fedlib.node_pb2_grpc.NodeServiceStub(self.channel(node, as_name))

    def raw(self, rpc: str, node: str = "Leeds", as_name: str = "coordinator") -> Any:
        """A callable taking the raw request payload (bytes) and returning raw reply bytes."""
        return self.channel(node, as_name).unary_unary(
            f"/{SERVICE}/{rpc}", request_serializer=None, response_deserializer=None
        )

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        for n in self.nodes.values():
            n.stop(0)


@contextmanager
def cluster(
    root: Path,
    names: Sequence[str] = ("Leeds",),
    *,
    budgets: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> Iterator[Cluster]:
    fed = fedlib.make(root, node_names=names)
    c = Cluster(fed)
    try:
        for name in names:
            cfg = fedlib.node_config(fed, name, budgets=budgets)
            fedlib.ingest_council(fed, cfg)
            c.nodes[name] = start(cfg)
        yield c
    finally:
        c.close()


# -- observing a node -----------------------------------------------------------------


def spent(c: Cluster, node: str = "Leeds") -> dict[str, float]:
    """Budget spent per dataset, over the wire (GetBudget)."""
    reply = c.stub(node).GetBudget(node_pb2.GetBudgetRequest(), timeout=TIMEOUT)
    out = {}
    for d in reply.datasets:
        kind = d.budget_spent.WhichOneof("loss")
        out[d.name] = float(getattr(d.budget_spent, kind))
    return out


def audit_bodies(c: Cluster, node: str = "Leeds", from_seq: int = 1) -> list[dict[str, Any]]:
    log = c.nodes[node].service.ledger.audit_log
    out: list[dict[str, Any]] = []
    while True:
        batch = log.export(from_seq, 1000)
        out += [json.loads(e.body) for e in batch]
        if len(batch) < 1000:
            return out
        from_seq = batch[-1].seq + 1


def audit_seq(c: Cluster, node: str = "Leeds") -> int:
    last = c.nodes[node].service.ledger.audit_log.last()
    return 0 if last is None else last.seq


def serving(c: Cluster, node: str = "Leeds") -> bool:
    reply = c.stub(node).Describe(node_pb2.DescribeRequest(), timeout=TIMEOUT)
    return bool(reply.organisation == node)


def call(fn: Any, request: Any) -> tuple[grpc.StatusCode, str, Any]:
    """(status, details, reply or None) of one unary call."""
    try:
        reply = fn(request, timeout=TIMEOUT)
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None
    return S.OK, "", reply


# -- building hostile but correctly signed messages ---------------------------------


def template_dict(fed: fedlib.Federation, name: str = T1) -> dict[str, Any]:
    """A reference template as its canonical dict, with this federation's analyst."""
    return template_parse.to_dict(fed.template(name))


def signed_template(
    data: bytes | Mapping[str, Any], signers: Sequence[SigningKey]
) -> common_pb2.SignedTemplate:
    """Approver signatures over the digest of exactly these bytes (any bytes at all)."""
    raw = data if isinstance(data, bytes) else canonical.encode(dict(data))
    digest = templates.digest_of_bytes(raw)
    return common_pb2.SignedTemplate(
        canonical=raw,
        approvals=[
            common_pb2.Approval(approver_key=a.approver_key, signature=a.signature)
            for a in (approvals.sign(digest, k) for k in signers)
        ],
    )


def request_body(
    fed: fedlib.Federation,
    template_bytes: bytes,
    params: Mapping[str, Any],
    *,
    audience: Sequence[str] = ("Leeds",),
    mode: Mode = Mode.COMBINED,
    analyst: SigningKey | None = None,
    lifetime: timedelta = timedelta(minutes=30),
) -> dict[str, Any]:
    analyst = analyst or fed.analyst
    return requests.new_request(
        template_digest=templates.digest_of_bytes(template_bytes),
        params=params,
        mode=mode,
        audience=audience,
        analyst_key=analyst.public.key_id,
        now=datetime.now(UTC),
        lifetime=lifetime,
    ).to_dict()


def signed_request(body: bytes | Mapping[str, Any], key: SigningKey) -> common_pb2.SignedRequest:
    """The analyst's signature over exactly these body bytes (any bytes at all)."""
    raw = body if isinstance(body, bytes) else canonical.encode(dict(body))
    return common_pb2.SignedRequest(canonical=raw, signature=key.sign(keys.QUERY_REQUEST, raw))


def execute(
    fed: fedlib.Federation,
    template: bytes | Mapping[str, Any],
    params: Mapping[str, Any],
    *,
    signers: Sequence[SigningKey] | None = None,
    **request: Any,
) -> node_pb2.ExecuteRequest:
    """An Execute request for any template bytes or dict, approved by two trusted
    approvers (or `signers`) and signed by the federation's analyst (or `analyst`)."""
    st = signed_template(template, fed.approvers[:2] if signers is None else signers)
    body = request_body(fed, st.canonical, params, **request)
    analyst = request.get("analyst") or fed.analyst
    return node_pb2.ExecuteRequest(template=st, request=signed_request(body, analyst))


# -- what a refusal may say ------------------------------------------------------------

ECHO_LIMIT = 60


def unsafe_chars(text: str) -> list[str]:
    """Control and invisible formatting characters (C0, C1, DEL, bidi overrides...)."""
    return [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn")]


def echoed(details: str, hostile: Sequence[str], limit: int = ECHO_LIMIT) -> str | None:
    """A run of more than `limit` characters of any hostile string found in details."""
    n = limit + 1
    for i in range(max(0, len(details) - n + 1)):
        window = details[i : i + n]
        if any(window in h for h in hostile if len(h) >= n):
            return window
    return None


# -- Hypothesis strategies: hostile values and messages built from descriptors --------

HOSTILE_TEXT = (
    "'; DROP TABLE x; --",
    '" OR 1=1 --',
    "Robert'); DELETE FROM releases;--",
    "\u202eevil\u202c",  # right-to-left override
    "\u0430dmin",  # Cyrillic a: a homoglyph
    "Leeds\u0301\u0301\u0301",  # combining accents
    "\x00",
    "a\x00b",
    "\x1b[31mred",
    "\ufeff",
    "\U0001f4a9" * 8,
    "ZZSECRET" * 4,
    "coordinator",
    "Leeds",
    "../../etc/passwd",
    "%s%n%x",
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59-05:00",
    "2025-03-31",
    "2025-02-30",
    "ed25519:" + "0" * 64,
    "ed25519:" + "G" * 64,
)
HUGE_TEXT = ("A" * 100_000, "\u202e" * 30_000, "é" * 70_000, "\x00" * 10_000)
EDGE_INTS = (0, 1, -1, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, -(2**63), 2**64 - 1)
# Number literals swapped into JSON bytes: limits, non-finite, and over Python's
# 4300-digit integer conversion limit.
NUMBER_TEXT = (
    b"0",
    b"-1",
    b"-0",
    b"0.5",
    b"1e308",
    b"1e999",
    b"-1e999",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"5e-324",
    b"9" * 5000,
    b"1" + b"0" * 400,
)


def hostile_text() -> Any:
    return st.one_of(
        st.sampled_from(HOSTILE_TEXT),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
        st.sampled_from(HUGE_TEXT),
    )


def json_values() -> Any:
    """Any JSON value, hostile leaning: edge numbers, hostile text, nesting."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from(EDGE_INTS),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(HOSTILE_TEXT),
        st.text(max_size=20),
    )
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.text(max_size=10) | st.sampled_from(HOSTILE_TEXT), inner, max_size=3
            )
        ),
        max_leaves=6,
    )


_KEY = re.compile(rb'"([A-Za-z_][A-Za-z0-9_]*)":')
_NUMBER = re.compile(rb"(?<=[:\[,])-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?(?=[,\]}])")
_STRING_VALUE = re.compile(rb'(?<=[:\[,])"(?:[^"\\]|\\.)*"(?=[,\]}])')


_BYTE_OPS = ("flip", "truncate", "insert", "delete", "dupkey", "number", "text")


def mutated_bytes(seeds: Sequence[bytes]) -> Any:
    """Byte-level mutations of valid canonical JSON: flipped and inserted bytes,
    truncation, duplicated keys, swapped numbers and strings."""

    @st.composite
    def build(draw: Any) -> bytes:
        b = bytearray(draw(st.sampled_from(list(seeds))))
        for _ in range(draw(st.integers(1, 3))):
            op = draw(st.sampled_from(_BYTE_OPS))
            n = len(b)
            if n == 0:
                b += draw(st.binary(min_size=1, max_size=8))
                continue
            i = draw(st.integers(0, n - 1))
            if op == "flip":
                b[i] ^= draw(st.integers(1, 255))
            elif op == "truncate":
                del b[i:]
            elif op == "insert":
                b[i:i] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(NUMBER_TEXT))
            elif op == "delete":
                del b[i : i + draw(st.integers(1, 16))]
            else:
                pattern = {"dupkey": _KEY, "number": _NUMBER, "text": _STRING_VALUE}[op]
                found = list(pattern.finditer(bytes(b)))
                if not found:
                    continue
                m = draw(st.sampled_from(found))
                if op == "dupkey":
                    value = canonical_or_null(draw(json_values()))
                    b[m.start() : m.start()] = m.group(0) + value + b","
                elif op == "number":
                    b[m.start() : m.end()] = draw(st.sampled_from(NUMBER_TEXT))
                else:
                    text = draw(hostile_text())
                    b[m.start() : m.end()] = json.dumps(text, ensure_ascii=False).encode(
                        "utf-8", "surrogatepass"
                    )
        return bytes(b)

    return build()


def canonical_or_null(value: Any) -> bytes:
    try:
        return canonical.encode(value)
    except canonical.CanonicalError:
        return b"null"


def mutated_tree(value: Any) -> Any:
    """Structural mutations of a JSON document that stay canonical: a value replaced
    (hostile text, edge numbers, wrong types), a key removed or an unknown one added."""

    @st.composite
    def build(draw: Any) -> Any:
        doc = json.loads(json.dumps(value))
        for _ in range(draw(st.integers(1, 3))):
            slots = list(_slots(doc))
            if not slots:
                break
            container, key = draw(st.sampled_from(slots))
            op = draw(st.sampled_from(("tweak", "tweak", "replace", "delete", "unknown")))
            if op == "tweak":
                container[key] = draw(_tweaks(container[key]))
            elif op == "replace":
                container[key] = draw(json_values())
            elif op == "delete":
                del container[key]
            elif isinstance(container, dict):
                container[draw(st.sampled_from(UNKNOWN_KEYS))] = draw(json_values())
        return doc

    return build()


UNKNOWN_KEYS = ("sensitivity", "sql", "x", "ZZSECRET" * 3, "\x1b[2J" + "K" * 100, "\u202e" * 3)


def _tweaks(v: Any) -> Any:
    """A value of the same type, near or past its limits."""
    if isinstance(v, bool):
        return st.just(not v)
    if isinstance(v, int):
        near = (v + 1, v - 1, -v, v * 1000, 10**9, 10**9 + 1, 1001, 10_001)
        return st.sampled_from((*near, *EDGE_INTS))
    if isinstance(v, float):
        return st.sampled_from((0.0, -v, v * 1e6, v / 1e6, 1e-300, 5e-324, 10.0, 10.000001, 1e308))
    if isinstance(v, str):
        return st.sampled_from((v + "x", v.upper(), v[:-1], v * 2, "", *HOSTILE_TEXT))
    if isinstance(v, list):
        return st.sampled_from(([], v[:1], v * 2, v[::-1], [*v, *v[:1]]))
    if isinstance(v, dict):
        return st.just({}) | st.just({**v, **{k: None for k in list(v)[:1]}})
    return json_values()


def _slots(doc: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield doc, k
            yield from _slots(v)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield doc, i
            yield from _slots(v)


def messages_for(
    descriptor: Any, seeds: Mapping[str, Sequence[Any]] | None = None, *, depth: int = 0
) -> Any:
    """A strategy for messages of `descriptor`'s type, walking its fields: hostile
    strings, random and mutated bytes, integers at their limits, non-finite doubles,
    unknown enum numbers, repeated fields and nested messages. `seeds` maps a field's
    full name to valid values, which are sent as they are or mutated, and a message
    type's full name to valid whole messages, sent as they are."""
    seeds = seeds or {}
    cls = message_factory.GetMessageClass(descriptor)
    whole = list(seeds.get(descriptor.full_name, ()))
    plain: dict[str, Any] = {}
    oneofs: dict[str, list[tuple[str, Any]]] = {}
    for f in descriptor.fields:
        s = _field_strategy(f, seeds, depth)
        if f.is_repeated:
            s = st.lists(s, max_size=3 if depth == 0 else 2)
        elif f.containing_oneof is not None:
            oneofs.setdefault(f.containing_oneof.name, []).append((f.name, s))
            continue
        plain[f.name] = st.none() | s
    choices = [
        st.none() | st.one_of([st.tuples(st.just(n), s) for n, s in fields])
        for fields in oneofs.values()
    ]

    def build(values: dict[str, Any], chosen: tuple[Any, ...]) -> Any:
        kwargs = {k: v for k, v in values.items() if v is not None}
        for c in chosen:
            if c is not None:
                kwargs[c[0]] = c[1]
        return cls(**kwargs)

    generated = st.builds(build, st.fixed_dictionaries(plain), st.tuples(*choices))
    return st.sampled_from(whole) | generated if whole else generated


def _field_strategy(f: Any, seeds: Mapping[str, Sequence[Any]], depth: int) -> Any:
    seeded = list(seeds.get(f.full_name, ()))
    if f.type == F.TYPE_MESSAGE:
        if depth >= 3:
            return st.just(message_class(f.message_type)())
        return messages_for(f.message_type, seeds, depth=depth + 1)
    if f.type == F.TYPE_STRING:
        base = hostile_text()
        return st.sampled_from(seeded) | base if seeded else base
    if f.type == F.TYPE_BYTES:
        base = st.binary(max_size=96) | st.sampled_from([b"", b"\x00" * 64, b"{}", b"null"])
        if seeded:
            return st.sampled_from(seeded) | mutated_bytes(seeded) | base
        return base
    if f.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(width=64 if f.type == F.TYPE_DOUBLE else 32) | st.sampled_from(
            [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 5e-324, 1.7976931348623157e308]
        )
    if f.type == F.TYPE_BOOL:
        return st.booleans()
    if f.type == F.TYPE_ENUM:
        numbers = [v.number for v in f.enum_type.values]
        return st.sampled_from(numbers) | st.integers(-(2**31), 2**31 - 1)
    lo, hi = _INT_RANGES[f.type]
    return (
        st.sampled_from([x for x in (*EDGE_INTS, *seeded) if lo <= x <= hi])
        | st.integers(lo, hi)
        | st.integers(-3, 1000).filter(lambda x: lo <= x <= hi)
    )


def message_class(descriptor: Any) -> Any:
    return message_factory.GetMessageClass(descriptor)


def _int_ranges() -> dict[int, tuple[int, int]]:
    i32, i64 = (-(2**31), 2**31 - 1), (-(2**63), 2**63 - 1)
    u32, u64 = (0, 2**32 - 1), (0, 2**64 - 1)
    return {
        F.TYPE_INT32: i32,
        F.TYPE_SINT32: i32,
        F.TYPE_SFIXED32: i32,
        F.TYPE_INT64: i64,
        F.TYPE_SINT64: i64,
        F.TYPE_SFIXED64: i64,
        F.TYPE_UINT32: u32,
        F.TYPE_FIXED32: u32,
        F.TYPE_UINT64: u64,
        F.TYPE_FIXED64: u64,
    }


_INT_RANGES = _int_ranges()


# -- the checks every refusal passes ----------------------------------------------------


def assert_refused(
    c: Cluster,
    rpc: str,
    request: Any,
    want: grpc.StatusCode,
    *,
    node: str = "Leeds",
    as_name: str = "coordinator",
    hostile: Sequence[str] = (),
) -> str:
    """Send one request and check the refusal: the precise status, a clear message with
    no control characters and no long echo of hostile input, nothing spent on any node,
    an audit entry with that outcome on `node`, and every node still serving."""
    before = {n: spent(c, n) for n in c.nodes}
    seq = audit_seq(c, node)
    code, details, _ = call(getattr(c.stub(node, as_name), rpc), request)
    assert code == want, f"{rpc}: {code.name} {details!r}, wanted {want.name}"
    assert len(details) >= 10, "a refusal says why"
    assert not unsafe_chars(details), f"control characters in {details!r}"
    run = echoed(details, [h for h in hostile if h])
    assert run is None, f"the refusal echoes hostile input: {run!r}"
    assert {n: spent(c, n) for n in c.nodes} == before, "a refusal spent budget"
    outcomes = [b["outcome"] for b in audit_bodies(c, node, from_seq=seq + 1)]
    assert want.name in outcomes, f"no audit entry with {want.name}: {outcomes}"
    assert all(serving(c, n) for n in c.nodes)
    return details
