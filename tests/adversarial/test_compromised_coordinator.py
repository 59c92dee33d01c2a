"""A compromised coordinator: the real coordinator with a hostile patch on the result it
streams back. The analyst's client, holding the nodes' keys, must catch each forgery and
name the node (or the combined figures) and the part that does not hold."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera import answers, canonical, results
from tessera.client import Client
from tessera.coordinator import queries as queries_mod
from tessera.coordinator.model import NodeReport, QueryResult, SignedPart
from tessera.keys import SigningKey
from tessera.verify import VerificationFailed
from tests.support import coordinator as region_lib

T1 = "cla-by-age-and-placement"  # per_node_breakdown = true
T2 = "referrals-by-need-and-age"  # per_node_breakdown = false
P1 = {"on_date": "2025-03-31"}
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}
Tamper = Callable[[QueryResult], QueryResult]


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path_factory.mktemp("region"), distinct_node_keys=True)
    try:
        region_lib.published(r, T1, quorum=2)
        region_lib.published(r, T2)
        yield r
    finally:
        r.stop()


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> Callable[[Tamper], None]:
    """Install a tamper function on the coordinator's finished result."""
    original = queries_mod.Queries._finish

    def install(tamper: Tamper) -> None:
        def finish(self: Any, run: Any, outcomes: Any) -> QueryResult:
            return tamper(original(self, run, outcomes))

        monkeypatch.setattr(queries_mod.Queries, "_finish", finish)

    return install


def _client(region: region_lib.Region, trust: dict[str, str] | None = None) -> Client:
    trust = trust if trust is not None else region.fed.trust(region_lib.COUNCILS)
    c = Client(
        region.address,
        region.fed.tls(region_lib.ANALYST),
        region.fed.analyst,
        timeout=30,
        trust=trust,
    )
    region.clients.append(c)
    return c


def _refused(client: Client, template: str = T1, mode: str = "combined") -> list[str]:
    with pytest.raises(VerificationFailed) as info:
        client.run_query(template, P1 if template == T1 else P2, mode=mode)
    return [str(p) for p in info.value.verification.problems]


def _part(r: QueryResult, org: str) -> SignedPart:
    return next(p for p in r.parts if p.organisation == org)


# -- honest baseline -------------------------------------------------------------------


def test_an_honest_result_verifies_and_is_recomputed_in_both_modes(
    region: region_lib.Region,
) -> None:
    client = _client(region)
    combined = client.run_query(T1, P1)
    assert combined.verification.ok and combined.verification.recomputed
    assert combined.verification.nodes == tuple(sorted(region_lib.COUNCILS))
    per_node = client.run_query(T1, P1, mode="per_node")
    assert per_node.verification.ok and per_node.verification.recomputed
    # Each statement names the audit entry that records the same payload digest.
    for p in per_node.parts:
        st = answers.parse(p.statement)
        assert st.payload_sha256 == answers.payload_digest(p.payload)
        assert st.audit_seq > 0 and len(st.audit_hash) == 64
    # A stored query verifies again later, from its history.
    assert client.verify_query(per_node.query_id).ok


def test_a_combined_only_result_never_carries_a_nodes_figures(
    region: region_lib.Region,
) -> None:
    client = _client(region)
    result = client.run_query(T2, P2)
    assert result.released and result.per_node is None
    assert sorted(p.organisation for p in result.parts) == sorted(region_lib.COUNCILS)
    assert all(p.payload == b"" for p in result.parts)
    v = result.verification
    assert v.ok and not v.recomputed and v.notes
    # The statements still prove who answered which request at what cost.
    for p in result.parts:
        st = answers.parse(p.statement)
        assert st.request_id == result.query_id and st.cost > 0


# -- forgeries -------------------------------------------------------------------------


def test_changing_one_combined_cell_is_detected(
    region: region_lib.Region, hostile: Callable[[Tamper], None]
) -> None:
    def tamper(r: QueryResult) -> QueryResult:
        cells = list(r.cells)
        c = cells[3]
        cells[3] = dataclasses.replace(c, estimate=c.estimate + 5, ci95_high=c.ci95_high + 5)
        return dataclasses.replace(r, cells=tuple(cells))

    hostile(tamper)
    problems = _refused(_client(region))
    assert len(problems) == 1 and problems[0].startswith("combined: cell ")
    assert "the signed answers of Bradford, Leeds, Wakefield give" in problems[0]


def test_changing_one_nodes_cell_is_detected_and_names_the_node(
    region: region_lib.Region, hostile: Callable[[Tamper], None]
) -> None:
    def tamper(r: QueryResult) -> QueryResult:
        per_node = []
        for org, cells in r.per_node:
            if org == "Leeds":
                c = cells[0]
                cells = (dataclasses.replace(c, estimate=c.estimate + 1), *cells[1:])
            per_node.append((org, cells))
        return dataclasses.replace(r, per_node=tuple(per_node))

    hostile(tamper)
    problems = _refused(_client(region), mode="per_node")
    assert len(problems) == 1 and problems[0].startswith("Leeds: cell ")


def test_dropping_a_node_and_rescaling_is_detected(
    region: region_lib.Region, hostile: Callable[[Tamper], None]
) -> None:
    def tamper(r: QueryResult) -> QueryResult:
        # Claim Bradford failed, drop its part, and scale the sum of the others up.
        nodes = tuple(
            NodeReport(n.organisation, "UNAVAILABLE", "down", False, n.latency_ms)
            if n.organisation == "Bradford"
            else n
            for n in r.nodes
        )
        cells = tuple(dataclasses.replace(c, estimate=round(c.estimate * 1.5)) for c in r.cells)
        parts = tuple(p for p in r.parts if p.organisation != "Bradford")
        return dataclasses.replace(r, nodes=nodes, cells=cells, parts=parts)

    hostile(tamper)
    problems = _refused(_client(region))
    assert problems and all(p.startswith("combined: cell ") for p in problems)
    assert all("no signed answer from Bradford" in p for p in problems)


def test_swapping_two_nodes_answers_is_detected(
    region: region_lib.Region, hostile: Callable[[Tamper], None]
) -> None:
    def tamper(r: QueryResult) -> QueryResult:
        b, leeds = _part(r, "Bradford"), _part(r, "Leeds")
        swapped = {
            "Bradford": SignedPart("Bradford", leeds.statement, leeds.signature, leeds.payload),
            "Leeds": SignedPart("Leeds", b.statement, b.signature, b.payload),
        }
        parts = tuple(swapped.get(p.organisation, p) for p in r.parts)
        per = dict(r.per_node)
        per["Bradford"], per["Leeds"] = per["Leeds"], per["Bradford"]
        return dataclasses.replace(r, parts=parts, per_node=tuple(sorted(per.items())))

    hostile(tamper)
    problems = _refused(_client(region), mode="per_node")
    named = {p.split(":")[0] for p in problems if ": signature: " in p}
    assert named == {"Bradford", "Leeds"}
    # With two of three parts forged, the rest cannot make the template's quorum.
    assert "combined: quorum: released from 1 verified node(s)" in "\n".join(problems)


def test_swapping_answers_between_nodes_sharing_a_key_is_still_detected(
    region: region_lib.Region, hostile: Callable[[Tamper], None]
) -> None:
    """Even if two organisations were given the same key, the signed statement names its
    organisation: a swap is caught by the name, not only by the key."""

    def tamper(r: QueryResult) -> QueryResult:
        b = _part(r, "Bradford")
        parts = tuple(
            SignedPart("Leeds", b.statement, b.signature, b.payload)
            if p.organisation == "Leeds"
            else p
            for p in r.parts
        )
        return dataclasses.replace(r, parts=parts)

    hostile(tamper)
    trust = region.fed.trust(region_lib.COUNCILS)
    trust["Leeds"] = trust["Bradford"]
    problems = _refused(_client(region, trust))
    assert any(
        p.startswith("Leeds: statement: the signed statement is 'Bradford'") for p in problems
    )


def test_replaying_an_old_answer_for_a_new_request_is_detected(
    region: region_lib.Region, hostile: Callable[[Tamper], None]
) -> None:
    old = _client(region).run_query(T1, P1)
    old_leeds = next(p for p in old.parts if p.organisation == "Leeds")

    def tamper(r: QueryResult) -> QueryResult:
        parts = tuple(
            SignedPart("Leeds", old_leeds.statement, old_leeds.signature, old_leeds.payload)
            if p.organisation == "Leeds"
            else p
            for p in r.parts
        )
        return dataclasses.replace(r, parts=parts)

    hostile(tamper)
    problems = _refused(_client(region))
    assert problems[0] == "Leeds: statement: the signed answer is for another request (replayed)"


def test_inventing_a_node_is_detected(
    region: region_lib.Region, hostile: Callable[[Tamper], None]
) -> None:
    forger = SigningKey.generate()

    def tamper(r: QueryResult) -> QueryResult:
        # A plausible statement for the real request, signed with a key of its own.
        real = answers.parse(_part(r, "Leeds").statement)
        fake = dataclasses.replace(real, organisation="Calderdale", node_key=forger.public.key_id)
        signed = answers.sign(fake, forger)
        payload = _part(r, "Leeds").payload
        parts = (*r.parts, SignedPart("Calderdale", signed.statement, signed.signature, payload))
        nodes = (*r.nodes, NodeReport("Calderdale", "OK", "", True, 1.0))
        return dataclasses.replace(r, parts=parts, nodes=nodes)

    hostile(tamper)
    # The analyst does not know Calderdale at all...
    problems = _refused(_client(region))
    assert "Calderdale: node: not a node you trust (no key for it in your trust list)" in problems
    # ...or knows Calderdale's real key, which the coordinator does not hold.
    trust = region.fed.trust(region_lib.COUNCILS)
    trust["Calderdale"] = SigningKey.generate().public.key_id
    problems = _refused(_client(region, trust))
    assert any(p.startswith("Calderdale: signature: ") for p in problems)


def test_changing_a_nodes_payload_is_detected(
    region: region_lib.Region, hostile: Callable[[Tamper], None]
) -> None:
    """Rewriting the figures a node signed, and the cells to match them."""

    def tamper(r: QueryResult) -> QueryResult:
        p = _part(r, "Wakefield")
        d = canonical.decode(p.payload)
        d["measures"][0]["values"][0] += 3
        forged = canonical.encode(d)
        parts = tuple(
            SignedPart("Wakefield", p.statement, p.signature, forged)
            if q.organisation == "Wakefield"
            else q
            for q in r.parts
        )
        return dataclasses.replace(r, parts=parts)

    hostile(tamper)
    problems = _refused(_client(region))
    assert problems[0] == (
        "Wakefield: payload: the figures do not match the digest the node signed"
    )


def test_a_verified_recombination_uses_the_shared_release_rules(
    region: region_lib.Region,
) -> None:
    """The client's recomputation is the coordinator's: same measures, same cells."""
    client = _client(region)
    r = client.run_query(T1, P1, mode="per_node")
    t = client.get_template(r.template_digest).template
    measures = [answers.measures_from_payload(p.payload)[2] for p in r.parts]
    expect = results.release(t, results.combine(measures))
    assert [c.estimate for c in r.cells] == [c.estimate for c in expect]


def test_query_verify_on_the_command_line(
    region: region_lib.Region,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tessera.cli.main import main as cli
    from tessera.coordinator import combine

    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"nodes": region.fed.trust(region_lib.COUNCILS)}))
    env = {
        "TESSERA_COORDINATOR": region.address,
        "TESSERA_TLS_DIR": str(region.fed.root / "certs"),
        "TESSERA_IDENTITY": region_lib.ANALYST,
    }
    honest = _client(region).run_query(T1, P1, mode="per_node")
    assert cli(["query", "verify", honest.query_id, "--trust", str(trust)], env) == 0
    assert capsys.readouterr().out.startswith("VERIFIED: 3 node(s)")

    # This time the forgery is in what the coordinator stores, and is checked later.
    real = combine.combine

    def forged(*args: Any, **kwargs: Any) -> QueryResult:
        r = real(*args, **kwargs)
        cells = list(r.cells)
        cells[0] = dataclasses.replace(cells[0], estimate=cells[0].estimate + 10)
        return dataclasses.replace(r, cells=tuple(cells))

    monkeypatch.setattr(combine, "combine", forged)
    plain = Client(region.address, region.fed.tls(region_lib.ANALYST), region.fed.analyst)
    region.clients.append(plain)
    bad = plain.run_query(T1, P1, mode="per_node")  # no trust given: not checked here
    assert cli(["query", "verify", bad.query_id, "--trust", str(trust)], env) == 1
    out = capsys.readouterr().out
    assert out.startswith("NOT VERIFIED:") and "combined: cell " in out


def test_a_re_released_combined_only_result_still_verifies(tmp_path: Path) -> None:
    """The coordinator releases a combined-only question once per contributor set: asked
    again with a node missing, it returns the earlier release. Its statements answer the
    earlier request, which it forwards, so the analyst can still check them."""
    r = region_lib.start_region(tmp_path / "again", distinct_node_keys=True)
    try:
        region_lib.published(r, T2, quorum=2)
        client = _client(r)
        first = client.run_query(T2, P2)
        assert first.verification.ok and first.answered_request is None
        r.stop_node("Wakefield")
        again = client.run_query(T2, P2)
        assert again.query_id != first.query_id and again.answered_request is not None
        assert again.verification.ok and again.verification.notes
        assert again.cells == first.cells
        assert f"asked as {first.query_id}" in " ".join(again.verification.notes)
    finally:
        r.stop()


def test_node_keys_vouched_for_by_the_approvers(
    region: region_lib.Region, hostile: Callable[[Tamper], None], tmp_path: Path
) -> None:
    """The analyst holds only the approvers' keys; the approvers sign the roster."""
    from datetime import UTC, datetime

    from tessera import roster, verify

    body = roster.make(
        "West Yorkshire test region",
        [roster.Entry(o, region.fed.key_of(o).public.key_id, o) for o in region_lib.COUNCILS],
        datetime.now(UTC),
    )
    signed = [roster.sign(body, k) for k in region.fed.approvers[:2]]
    roster.save(tmp_path / "roster.json", body, signed)
    trust_file = tmp_path / "trust.json"
    approver_keys = [k.public.key_id for k in region.fed.approvers]
    trust_file.write_text(
        json.dumps({"approvers": {"threshold": 2, "keys": approver_keys}, "roster": "roster.json"})
    )
    trust = verify.load_trust(trust_file)
    assert _client(region, trust).run_query(T1, P1).verification.ok

    def tamper(r: QueryResult) -> QueryResult:
        return dataclasses.replace(r, parts=r.parts[1:])

    hostile(tamper)
    problems = _refused(_client(region, trust))
    assert any(p.startswith("Bradford: nodes: reported as contributing") for p in problems)
