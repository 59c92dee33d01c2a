"""What every party of an overlap count sees, and what a dishonest relay or request
can do: real police and council nodes over mutual TLS, the coordinator's relay
(tessera.coordinator.overlap_run) recording every message."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera import requests, verify
from tessera.client_types import query_result
from tessera.coordinator import convert, overlap_run
from tessera.overlap import group, seal
from tessera.overlap.protocol import COUNTER
from tessera.templates.model import Mode
from tessera.wire.v1 import overlap_pb2 as pb
from tests.integration.test_overlap import drive, signed_request, spent
from tests.support import federation as fedlib
from tests.support import overlap as ovlib


@pytest.fixture
def region(tmp_path: Path) -> Iterator[ovlib.OverlapRegion]:
    yield from ovlib.running(tmp_path)


def _signed_template(region: ovlib.OverlapRegion, signers: int = 2) -> Any:
    return fedlib.sign_template(region.template, region.fed.approvers[:signers])


def _run(
    region: ovlib.OverlapRegion,
    signed: requests.SignedRequest | None = None,
    st: Any = None,
    **kw: Any,
) -> overlap_run.OverlapOutcome:
    st = st or _signed_template(region)
    signed = signed or signed_request(region, st)
    return asyncio.run(drive(region, st, signed, region.template, **kw))


def _points(messages: list[tuple[str, bytes]]) -> set[bytes]:
    out: set[bytes] = set()
    for _, raw in messages:
        m = pb.OverlapMessage.FromString(raw)
        if m.WhichOneof("body") == "blinded":
            out.update(group.unpack(m.blinded.points))
    return out


def test_no_identifier_and_no_repeated_blinding_in_any_message(
    region: ovlib.OverlapRegion,
) -> None:
    first, second = _run(region, record=True), _run(region, record=True)
    assert not first.aborted and not second.aborted, (first.aborted, second.aborted)
    seen = first.received + second.received
    recipients = {who for who, _ in seen}
    assert recipients == {ovlib.POLICE, ovlib.COUNCIL, "coordinator"}
    forms = set()
    for nhs in region.numbers:
        forms |= {nhs, f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}", f"{nhs}.0"}
    everything = [raw for _, raw in seen] + [first.release or b"", second.release or b""]
    everything += [b for o in (first, second) for pair in o.statements.values() for b in pair]
    for data in everything:
        for form in forms:
            assert form.encode() not in data
    a, b = _points(first.received), _points(second.received)
    assert len(a) > 100 and len(b) > 100
    assert not a & b  # fresh keys and a per-query hash: nothing links the two queries


def test_a_substituted_seal_key_is_refused_unpaid(region: ovlib.OverlapRegion) -> None:
    before = {o: spent(region, o) for o in ovlib.ORGS}

    def swap(hellos: list[pb.OverlapSignedHello]) -> list[pb.OverlapSignedHello]:
        out = []
        for h in hellos:
            if h.party == 0:  # the police's hello, with a key the coordinator holds
                m = pb.OverlapMessage.FromString(h.hello)
                m.hello.seal_public_key = seal.public_bytes(seal.new_key())
                h = pb.OverlapSignedHello(
                    party=h.party, hello=m.SerializeToString(), signature=h.signature
                )
            out.append(h)
        return out

    out = _run(region, on_hellos=swap)
    assert out.release is None
    assert "PERMISSION_DENIED" in out.reasons[ovlib.COUNCIL]
    assert "roster" in out.reasons[ovlib.COUNCIL]
    assert {o: spent(region, o) for o in ovlib.ORGS} == before
    assert not _run(region).aborted  # the nodes keep serving


def test_a_replayed_message_is_refused(region: ovlib.OverlapRegion) -> None:
    old = _run(region, record=True)
    blinded = [
        raw
        for who, raw in old.received
        if who == ovlib.COUNCIL
        and pb.OverlapMessage.FromString(raw).WhichOneof("body") == "blinded"
    ]
    assert blinded

    def replay(to: int, raw: bytes) -> bytes:
        m = pb.OverlapMessage.FromString(raw)
        return blinded[0] if to == 1 and m.WhichOneof("body") == "blinded" else raw

    out = _run(region, relay=replay)
    assert out.release is None
    assert "another query" in out.aborted

    plans: list[bytes] = []

    def twice(to: int, raw: bytes) -> bytes:
        # The noise party's sealed plan for the police, moved to the counter's slot.
        m = pb.OverlapMessage.FromString(raw)
        if m.WhichOneof("body") == "sealed" and m.sealed.recipient == 0:
            plans.append(raw)
        if to == COUNTER and m.WhichOneof("body") == "sealed" and plans:
            return plans[0]
        return raw

    out = _run(region, relay=twice)
    assert out.release is None and out.aborted


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unapproved", "PERMISSION_DENIED"),
        ("wrong_dataset", "FAILED_PRECONDITION"),
        ("audience", "INVALID_ARGUMENT"),
        ("mode", "FAILED_PRECONDITION"),
    ],
)
def test_bad_requests_are_refused_unpaid(region: ovlib.OverlapRegion, case: str, code: str) -> None:
    before = {o: spent(region, o) for o in ovlib.ORGS}
    st = _signed_template(region, signers=1 if case == "unapproved" else 2)
    audience = {"wrong_dataset": tuple(reversed(ovlib.ORGS)), "audience": (ovlib.COUNCIL,)}
    orgs = audience.get(case, ovlib.ORGS)
    mode = Mode.COMBINED if case == "mode" else Mode.OVERLAP
    signed = signed_request(region, st, audience=orgs, mode=mode)
    out = asyncio.run(drive(region, st, signed, region.template, orgs=orgs))
    assert out.release is None
    assert out.aborted.startswith(f"open: {code}"), out.aborted
    assert {o: spent(region, o) for o in ovlib.ORGS} == before
    refusals = [
        json.loads(e.body)
        for o in ovlib.ORGS
        for e in region.nodes[o].service.ledger.audit_log.export(1, 1000)
    ]
    assert any(r.get("method") == "ProtocolRound" and r["outcome"] == code for r in refusals)
    assert not _run(region).aborted  # and the nodes keep serving


def test_an_altered_release_fails_verification(region: ovlib.OverlapRegion) -> None:
    st = _signed_template(region)
    signed = signed_request(region, st)
    out = asyncio.run(drive(region, st, signed, region.template))
    request = requests.parse(signed.body)
    honest = overlap_run.release(region.template, request.template_digest, request, out)

    def check(result: Any) -> verify.Verification:
        client_view = query_result(convert.result_to_proto(result))
        return verify.verify_result(
            client_view,
            request=signed,
            template_canonical=st.canonical,
            trust=region.fed.trust(ovlib.ORGS),
        )

    assert check(honest).ok
    cells = list(honest.cells)
    cells[0] = dataclasses.replace(cells[0], estimate=cells[0].estimate + 1)
    altered = check(dataclasses.replace(honest, cells=tuple(cells)))
    assert not altered.ok and "counting node" in altered.summary()
    # Nor can the relay sign a release of its own: the payload no longer matches.
    parts = [
        dataclasses.replace(p, payload=p.payload.replace(b'"estimate":', b'"estimate": '))
        if p.payload
        else p
        for p in honest.parts
    ]
    assert not check(dataclasses.replace(honest, parts=tuple(parts))).ok
