"""Audience differencing gains nothing.

The audit's attack: ask one combined-only question of different audiences (subsets of
the nodes, each within quorum) and take differences; with 3 nodes and quorum 2,
(S_AB + S_AC - S_BC) / 2 = A. Tessera keys each node's noise by the audience, so each
audience is a fresh release paid for at every node in it.

For 3 and 4 real nodes behind a real coordinator, every quorum, and every subset of
the audiences the design admits (order does not matter to a linear estimate, and a
repeat returns the stored answer), this test takes the releases the nodes actually
made (from their ledgers) and computes the best linear unbiased estimate of one
node's figure. Its precision is never above what that node's paid zCDP ρ allows:
1/Var <= 2ρ/Δ², the precision of one Gaussian release at the whole ρ it paid. With a
declared participant set there is one audience, and no node's figure is identifiable.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tessera.client import ClientError
from tessera.templates.model import measure_sensitivities
from tests.support import coordinator as region_lib
from tests.support import federation as fedlib

T2 = "referrals-by-need-and-age"  # cin, combined-only, discrete Gaussian, rho 0.125
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}
FOUR = ("Bradford", "Calderdale", "Leeds", "Wakefield")


@pytest.fixture(params=[3, 4], ids=["3-nodes", "4-nodes"])
def region(request: Any, tmp_path: Path) -> Iterator[region_lib.Region]:
    councils = region_lib.COUNCILS if request.param == 3 else FOUR
    r = region_lib.start_region(tmp_path, councils)
    try:
        yield r
    finally:
        r.stop()


def _releases(region: region_lib.Region) -> dict[str, set[str]]:
    return {
        org: {row.answer_key for row in n.service.ledger.release_log()}
        for org, n in region.nodes.items()
    }


def _release(region: region_lib.Region, org: str, key: str) -> tuple[float, float]:
    """(variance of the node's noise per cell, rho it paid) for one release."""
    ledger = region.nodes[org].service.ledger
    (row,) = [r for r in ledger.release_log() if r.answer_key == key]
    payload = ledger.stored_answer(key)
    assert payload is not None
    (measure,) = json.loads(payload)["measures"]
    return float(measure["variance"]), row.rho


def _precision(
    audiences: list[tuple[str, ...]], variances: list[dict[str, float]], orgs: list[str]
) -> np.ndarray:
    """For every subset of the releases (rows), the best linear unbiased estimate's
    precision (1/variance) for each node's figure; 0 where it is not identifiable."""
    n, m = len(orgs), len(audiences)
    rows = np.array([[1.0 if o in a else 0.0 for o in orgs] for a in audiences])
    weights = np.array([1.0 / sum(v.values()) for v in variances])
    subsets = np.array(list(itertools.product((0.0, 1.0), repeat=m)))  # (2^m, m)
    info = np.einsum("sj,j,ja,jb->sab", subsets, weights, rows, rows)  # (2^m, n, n)
    pinv = np.linalg.pinv(info, hermitian=True)
    eye = np.eye(n)
    reach = np.einsum("sab,sbc->sac", info, pinv)  # projector onto the row space
    identifiable = np.all(np.isclose(np.einsum("sab,bk->sak", reach, eye), eye), axis=1)
    var = np.einsum("skk->sk", pinv)
    with np.errstate(divide="ignore"):
        return np.where(identifiable, 1.0 / np.where(identifiable, var, 1.0), 0.0), subsets


def test_no_sequence_of_audiences_beats_what_each_node_paid(region: region_lib.Region) -> None:
    orgs = sorted(region.nodes)
    analyst = region.analyst()
    template = region.fed.template(T2)
    (sens,) = measure_sensitivities(template.statistic).values()
    audiences: list[tuple[str, ...]] = []
    variances: list[dict[str, float]] = []
    paid: list[dict[str, float]] = []
    for quorum in range(2, len(orgs) + 1):
        digest = region_lib.published(region, T2, version=quorum, quorum=quorum)
        for size in range(quorum, len(orgs) + 1):
            for audience in itertools.combinations(orgs, size):
                before = _releases(region)
                result = analyst.run_query(digest, P2, nodes=list(audience))
                assert result.released, result.withheld_reason
                after = _releases(region)
                release_var, release_rho = {}, {}
                for org in orgs:
                    new = after[org] - before[org]
                    # Paid for at every node it touched, and only there.
                    assert len(new) == (1 if org in audience else 0), (org, audience)
                    if new:
                        v, rho = _release(region, org, new.pop())
                        # OpenDP's Gaussian map: rho = sens^2 / (2 sigma^2).
                        assert rho == pytest.approx(sens.l2**2 / (2 * v), rel=1e-6)
                        release_var[org], release_rho[org] = v, rho
                audiences.append(audience)
                variances.append(release_var)
                paid.append(release_rho)
                # Asking again gives the same answer and costs nothing anywhere.
                again = analyst.run_query(digest, P2, nodes=list(audience))
                assert [c.estimate for c in again.cells] == [c.estimate for c in result.cells]
                assert _releases(region) == after
    # Every subset of every release made, across all quorums' templates at once.
    precision, subsets = _precision(audiences, variances, orgs)
    for k, org in enumerate(orgs):
        rho_paid = subsets @ np.array([p.get(org, 0.0) for p in paid])
        allowed = 2 * rho_paid / sens.l2**2
        assert np.all(precision[:, k] <= allowed * (1 + 1e-9) + 1e-12), org
    # The audit's own attack, with fresh noise per audience: A from AB, AC, BC.
    if len(orgs) == 3:
        pick = [audiences.index(a) for a in itertools.combinations(orgs, 2)]
        mask = np.zeros(len(audiences))
        mask[pick] = 1.0
        (s,) = np.flatnonzero((subsets == mask).all(axis=1))
        v = variances[pick[0]][orgs[0]]
        # (S_AB + S_AC - S_BC)/2 has variance 6v/4; A paid for two releases (precision 2/v).
        assert precision[s, 0] == pytest.approx(1 / (1.5 * v), rel=1e-6)


def test_a_declared_participant_set_admits_one_audience_and_hides_every_node(
    region: region_lib.Region,
) -> None:
    orgs = sorted(region.nodes)
    digest = region_lib.published(region, T2, quorum=2, participants=tuple(orgs))
    analyst = region.analyst()
    result = analyst.run_query(digest, P2, nodes=orgs)
    assert result.released
    before = _releases(region)
    for audience in itertools.combinations(orgs, len(orgs) - 1):
        with pytest.raises(ClientError) as err:
            analyst.run_query(digest, P2, nodes=list(audience))
        assert err.value.code == "PERMISSION_DENIED"
        assert "fixed its audience" in err.value.message
    # A compromised coordinator asking a node directly is refused by the node too.
    fed = region.fed
    t = fed.template(T2, quorum=2, participants=tuple(orgs))
    signed = fedlib.sign_template(t, fed.approvers[:2])
    node = region.nodes[orgs[0]]
    stub = fedlib.node_stub(fed, node.port)
    with pytest.raises(grpc.RpcError) as rpc:
        stub.Execute(fedlib.execute_request(fed, signed, P2, audience=orgs[:2]))
    assert rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _releases(region) == before  # refusals release and spend nothing
    # One audience: the sum alone. No node's figure is in its row space.
    precision, _ = _precision([tuple(orgs)], [dict.fromkeys(orgs, 1.0)], orgs)
    assert np.all(precision == 0.0)


def test_a_dropout_cannot_be_used_to_difference(region: region_lib.Region) -> None:
    """S_ABC then S_AB (C down) would give C exactly: the coordinator answers the same
    question with the same contributors' noise only with its stored release."""
    orgs = sorted(region.nodes)
    digest = region_lib.published(region, T2, quorum=2)
    analyst = region.analyst()
    everyone = analyst.run_query(digest, P2, nodes=orgs)
    assert everyone.released
    region.stop_node(orgs[-1])
    without = analyst.run_query(digest, P2, nodes=orgs)
    assert without.released
    assert [c.estimate for c in without.cells] == [c.estimate for c in everyone.cells]
    assert without.query_id != everyone.query_id
