"""Intervals end to end: a real region (three council nodes and a coordinator over
mutual TLS). Each node's answer carries its noise distribution on the wire; the
combined cells carry the interval and exact level of the three nodes' convolved
noise; suppressed cells all show one interval."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera import intervals, results
from tessera.intervals import NoisePart
from tessera.node import privacy
from tessera.templates.model import measure_sensitivities
from tessera.wire.v1 import common_pb2
from tests.support import coordinator as region_lib
from tests.support import federation as fedlib

T1 = "cla-by-age-and-placement"
P1 = {"on_date": "2025-03-31"}


@pytest.fixture
def region(tmp_path: Path) -> Iterator[region_lib.Region]:
    r = region_lib.start_region(tmp_path)
    try:
        yield r
    finally:
        r.stop()


def _level(parts: list[NoisePart]) -> tuple[int, float]:
    k, level = intervals.half_width(parts)
    return k, math.floor(level * 1e6) / 1e6


def test_a_node_sends_its_noise_and_the_coordinator_convolves(
    region: region_lib.Region,
) -> None:
    fed = region.fed
    t = fed.template(T1)
    (cal,) = privacy.calibrate(t.privacy, measure_sensitivities(t.statistic))
    one = NoisePart(results.mechanism(cal.kind), cal.scale)

    # A node's own reply: the distribution on the measure, the exact level on each cell.
    signed = fedlib.sign_template(t, fed.approvers[:2])
    org = sorted(region.nodes)[0]
    stub = fedlib.node_stub(fed, region.nodes[org].port)
    reply = stub.Execute(fedlib.execute_request(fed, signed, P1, audience=[org]))
    (m,) = reply.answer.measures
    assert list(m.noise) == [common_pb2.NoiseComponent(mechanism=one.mechanism, scale=one.scale)]
    k1, level1 = _level([one])
    assert m.ci95_half_width == k1
    assert {c.coverage for c in reply.answer.cells} == {level1}

    # Through the coordinator: three nodes' noises convolved.
    analyst = region.analyst()
    info = analyst.submit_template(t)
    region.approver(0).approve(info.digest)
    region.approver(1).approve(info.digest)
    result = analyst.run_query(T1, P1, mode="per_node")
    assert result.released and len(result.nodes_answered) == 3
    k3, level3 = _level([one] * 3)
    assert k3 > k1 and {c.coverage for c in result.cells} == {level3}
    assert result.per_node is not None
    for cells in result.per_node.values():
        assert {c.coverage for c in cells} == {level1}
    for c in result.cells:
        if not c.suppressed:
            assert c.ci95[1] - c.ci95[0] <= 2 * k3
    shown = {c.ci95 for c in result.cells if c.suppressed}
    assert len(shown) == 1  # the test data has empty cells
    v_max = results.largest_suppressed(t.output.min_count, t.output.round_to)
    assert v_max is not None
    for lo_hi in shown:
        assert lo_hi == (0.0, float(v_max + k3))
    row = result.to_rows()[0]
    assert row["coverage"] == level3
    assert result.to_json_dict()["cells"][0]["coverage"] == level3
