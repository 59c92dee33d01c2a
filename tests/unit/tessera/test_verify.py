"""The analyst's check of a result (tessera.verify), offline: an honest result built from
three nodes' signed answers verifies; any one change a coordinator could make to it
(Hypothesis picks which) does not, and the failure names the node or "combined"."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tessera import answers, canonical, requests, results, templates, verify
from tessera.client_types import Cell, NodeReport, QueryResult, SignedPart
from tessera.keys import SigningKey
from tessera.templates.model import Mode, Template
from tests.support.federation import EXAMPLES

ORGS = ("Bradford", "Leeds", "Wakefield")
KEYS = {o: SigningKey.generate() for o in ORGS}
ANALYST = SigningKey.generate()
TRUST = {o: k.public.key_id for o, k in KEYS.items()}


@dataclass(frozen=True)
class Case:
    template: Template
    canonical: bytes
    signed: requests.SignedRequest
    result: QueryResult


def _cells(t: Template, cells: list[results.Cell]) -> list[Cell]:
    dims = [d.name for d in t.group_by]
    return [
        Cell(
            dict(zip(dims, c.labels, strict=True)),
            c.estimate,
            (c.ci95_low, c.ci95_high),
            c.suppressed,
        )
        for c in cells
    ]


@cache
def case(mode: Mode) -> Case:
    t = templates.load_toml((EXAMPLES / "cla-by-age-and-placement.toml").read_text())
    assert t.access.per_node_breakdown
    data = templates.encode(t)
    digest = templates.digest_of_bytes(data)
    req = requests.new_request(
        template_digest=digest,
        params={"on_date": "2025-03-31"},
        mode=mode,
        audience=ORGS,
        analyst_key=ANALYST.public.key_id,
        now=datetime.now(UTC),
    )
    signed = requests.sign(req, ANALYST)
    parts, measures = [], {}
    for i, org in enumerate(ORGS):
        payload = canonical.encode(
            {
                "salt": secrets.token_hex(16),
                "kind": "epsilon",
                "cost": 0.5,
                "measures": [
                    {
                        "name": "count",
                        "values": [(i * 7 + j * 3) % 23 - 2 for j in range(t.n_cells)],
                        "variance": 8.0,
                        "ci95": 6.0,
                        "ci975": 7.0,
                        "mechanism": "discrete_laplace",
                        "scale": 2.0,
                    }
                ],
            }
        )
        statement = answers.Statement(
            org,
            TRUST[org],
            req.request_id,
            signed.hash,
            digest,
            f"{i:064x}",
            t.dataset,
            1,
            answers.payload_digest(payload),
            "epsilon",
            0.5,
            0.5,
            False,
            10 + i,
            f"{i + 1:064x}",
        )
        s = answers.sign(statement, KEYS[org])
        parts.append(SignedPart(org, s.statement, s.signature, payload))
        measures[org] = answers.measures_from_payload(payload)[2]
    combined = results.release(t, results.combine([measures[o] for o in ORGS]))
    per_node = (
        {o: _cells(t, results.release(t, measures[o])) for o in ORGS}
        if mode is Mode.PER_NODE
        else None
    )
    result = QueryResult(
        query_id=req.request_id,
        template=t.id,
        template_digest=digest,
        mode=mode.value,
        released=True,
        withheld_reason="",
        statistic=t.statistic.kind.value,
        dimensions=[d.name for d in t.group_by],
        nodes=[NodeReport(o, "OK", "", True, 1.0) for o in ORGS],
        privacy_spent={"epsilon": 0.5},
        cells=_cells(t, combined),
        per_node=per_node,
        parts=parts,
    )
    return Case(t, data, signed, result)


def check(c: Case, result: QueryResult) -> verify.Verification:
    return verify.verify_result(
        result, request=c.signed, template_canonical=c.canonical, trust=TRUST
    )


def test_an_honest_result_verifies_in_both_modes() -> None:
    for mode in (Mode.COMBINED, Mode.PER_NODE):
        v = check(case(mode), case(mode).result)
        assert v.ok and v.recomputed and v.nodes == ORGS, v.problems


Tamper = Callable[[QueryResult, Any], QueryResult]


def _cell_edit(r: QueryResult, d: Any) -> QueryResult:
    cells = list(r.cells)
    i = d.draw(st.integers(0, len(cells) - 1))
    delta = d.draw(st.sampled_from([-5.0, -1.0, 1.0, 3.0]))
    cells[i] = dataclasses.replace(cells[i], estimate=cells[i].estimate + delta, suppressed=False)
    return dataclasses.replace(r, cells=cells)


def _interval_edit(r: QueryResult, d: Any) -> QueryResult:
    cells = list(r.cells)
    i = d.draw(st.integers(0, len(cells) - 1))
    lo, hi = cells[i].ci95
    cells[i] = dataclasses.replace(cells[i], ci95=(lo, hi + 1))
    return dataclasses.replace(r, cells=cells)


def _drop_part(r: QueryResult, d: Any) -> QueryResult:
    i = d.draw(st.integers(0, len(r.parts) - 1))
    return dataclasses.replace(r, parts=r.parts[:i] + r.parts[i + 1 :])


def _swap_payloads(r: QueryResult, d: Any) -> QueryResult:
    i, j = d.draw(st.sampled_from([(0, 1), (0, 2), (1, 2)]))
    parts = list(r.parts)
    parts[i], parts[j] = (
        dataclasses.replace(parts[i], payload=parts[j].payload),
        dataclasses.replace(parts[j], payload=parts[i].payload),
    )
    return dataclasses.replace(r, parts=parts)


def _swap_statements(r: QueryResult, d: Any) -> QueryResult:
    i, j = d.draw(st.sampled_from([(0, 1), (0, 2), (1, 2)]))
    parts = list(r.parts)
    a, b = parts[i], parts[j]
    parts[i] = SignedPart(a.organisation, b.statement, b.signature, b.payload)
    parts[j] = SignedPart(b.organisation, a.statement, a.signature, a.payload)
    return dataclasses.replace(r, parts=parts)


def _flip_signature_bit(r: QueryResult, d: Any) -> QueryResult:
    i = d.draw(st.integers(0, len(r.parts) - 1))
    bit = d.draw(st.integers(0, 511))
    sig = bytearray(r.parts[i].signature)
    sig[bit // 8] ^= 1 << (bit % 8)
    parts = list(r.parts)
    parts[i] = dataclasses.replace(parts[i], signature=bytes(sig))
    return dataclasses.replace(r, parts=parts)


def _privacy_spent(r: QueryResult, d: Any) -> QueryResult:
    return dataclasses.replace(r, privacy_spent={"epsilon": d.draw(st.sampled_from([0.25, 1.0]))})


def _mark_not_contributing(r: QueryResult, d: Any) -> QueryResult:
    i = d.draw(st.integers(0, len(r.nodes) - 1))
    nodes = list(r.nodes)
    nodes[i] = dataclasses.replace(nodes[i], contributed=False, status="UNAVAILABLE")
    return dataclasses.replace(r, nodes=nodes)


def _per_node_edit(r: QueryResult, d: Any) -> QueryResult:
    if r.per_node is None:
        return _cell_edit(r, d)
    org = d.draw(st.sampled_from(ORGS))
    cells = list(r.per_node[org])
    i = d.draw(st.integers(0, len(cells) - 1))
    cells[i] = dataclasses.replace(cells[i], estimate=cells[i].estimate + 2, suppressed=False)
    return dataclasses.replace(r, per_node={**r.per_node, org: cells})


TAMPERS: list[Tamper] = [
    _cell_edit,
    _interval_edit,
    _drop_part,
    _swap_payloads,
    _swap_statements,
    _flip_signature_bit,
    _privacy_spent,
    _mark_not_contributing,
    _per_node_edit,
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([Mode.COMBINED, Mode.PER_NODE]), st.sampled_from(TAMPERS), st.data())
def test_any_single_tampering_is_detected_and_named(mode: Mode, tamper: Tamper, d: Any) -> None:
    c = case(mode)
    forged = tamper(c.result, d)
    if forged == c.result:
        return
    v = check(c, forged)
    assert not v.ok, tamper.__name__
    named = {p.node or "combined" for p in v.problems}
    assert named <= {*ORGS, "combined"} and named


def test_a_result_for_another_request_is_refused() -> None:
    c = case(Mode.COMBINED)
    other = requests.sign(
        dataclasses.replace(requests.parse(c.signed.body), nonce="ab" * 16), ANALYST
    )
    v = verify.verify_result(c.result, request=other, template_canonical=c.canonical, trust=TRUST)
    assert not v.ok
    assert {str(p) for p in v.problems} >= {
        f"{o}: statement: the signed answer is for another request (replayed)" for o in ORGS
    }


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2),
    st.sampled_from(["statement", "signature", "payload"]),
    st.binary(max_size=300),
)
def test_garbage_in_a_part_is_a_named_problem_never_a_crash(
    index: int, field: str, junk: bytes
) -> None:
    c = case(Mode.PER_NODE)
    parts = list(c.result.parts)
    parts[index] = dataclasses.replace(parts[index], **{field: junk})
    v = check(c, dataclasses.replace(c.result, parts=parts))
    assert not v.ok
    assert ORGS[index] in {p.node for p in v.problems}
