"""Combining node answers: sums of vectors, variances that add, and quorum at its edges."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera import results, templates
from tessera.coordinator.combine import combine
from tessera.coordinator.model import Loss, NodeAnswer, Outcome
from tessera.templates.model import Mode, Template

ROOT = Path(__file__).resolve().parents[3]
T1 = templates.load_toml((ROOT / "examples/templates/cla-by-age-and-placement.toml").read_text())
T2 = templates.load_toml((ROOT / "examples/templates/referrals-by-need-and-age.toml").read_text())
DIGEST = templates.digest(T1)
N = T1.n_cells


def answer(org: str, values: list[int], variance: float, t: Template = T1) -> NodeAnswer:
    m = results.Measure(
        "count", tuple(values), variance, 1.96 * math.sqrt(variance), 2.24 * math.sqrt(variance)
    )
    kind = "epsilon" if t.privacy.epsilon is not None else "rho"
    return NodeAnswer(
        organisation=org,
        template_digest=templates.digest(t),
        dataset=t.dataset,
        dataset_version=1,
        statistic=t.statistic.kind.value,
        dimensions=tuple((d.name, d.labels) for d in t.group_by),
        measures={"count": m},
        cells=tuple(results.release(t, {"count": m})),
        cost=Loss(kind, 0.5),
        charged=0.5,
        from_cache=False,
    )


def ok(org: str, values: list[int], variance: float = 8.0) -> Outcome[NodeAnswer]:
    return Outcome(org, "OK", "", 3.0, answer(org, values, variance))


def down(org: str, status: str = "UNAVAILABLE") -> Outcome[NodeAnswer]:
    return Outcome(org, status, "the node could not be reached", 1.0)


def quorum(q: int, t: Template = T1) -> Template:
    return dataclasses.replace(t, access=dataclasses.replace(t.access, quorum=q))


vectors = st.lists(st.integers(-50, 5000), min_size=N, max_size=N)


@settings(max_examples=60, deadline=None)
@given(
    nodes=st.lists(st.tuples(vectors, st.floats(0.5, 500.0)), min_size=1, max_size=6),
    failed=st.integers(0, 3),
    q=st.integers(1, 8),
)
def test_released_iff_quorum_and_then_vectors_sum_and_variances_add(
    nodes: list[tuple[list[int], float]], failed: int, q: int
) -> None:
    t = quorum(q)
    outcomes = [
        Outcome(f"N{i}", "OK", "", 1.0, answer(f"N{i}", v, var)) for i, (v, var) in enumerate(nodes)
    ]
    outcomes += [down(f"F{i}") for i in range(failed)]
    r = combine(t, DIGEST, "q-1", Mode.COMBINED, outcomes)
    assert r.released == (len(nodes) >= q)
    assert [n.organisation for n in r.nodes] == sorted(o.organisation for o in outcomes)
    assert {n.organisation for n in r.nodes if n.contributed} == (
        {f"N{i}" for i in range(len(nodes))} if r.released else set()
    )
    if not r.released:
        assert r.cells == () and r.per_node == ()
        assert f"{len(nodes)} of the {q} nodes" in r.withheld_reason
        for i in range(failed):
            assert f"F{i} (UNAVAILABLE: the node could not be reached)" in r.withheld_reason
        return
    summed = results.combine([a.value.measures for a in outcomes if a.value is not None])
    want = [sum(v[i] for v, _ in nodes) for i in range(N)]
    assert list(summed["count"].values) == want
    assert summed["count"].variance == pytest.approx(math.fsum(var for _, var in nodes))
    if len(nodes) > 1:
        sd = math.sqrt(sum(var for _, var in nodes))
        parts = [a.value.measures["count"] for a in outcomes if a.value is not None]
        rss = math.sqrt(sum(p.ci95_half_width**2 for p in parts))
        assert summed["count"].ci95_half_width == pytest.approx(max(results.Z95 * sd, rss))
    assert r.cells == tuple(results.release(t, summed))
    assert r.withheld_reason == ""
    assert r.privacy_spent == Loss("epsilon", 0.5)


def test_exactly_quorum_releases_and_one_short_withholds_naming_why() -> None:
    three = [
        ok("Leeds", [10] * N),
        ok("Bradford", [20] * N),
        down("Wakefield", "DEADLINE_EXCEEDED"),
    ]
    assert combine(quorum(2), DIGEST, "q", Mode.COMBINED, three).released
    r = combine(quorum(3), DIGEST, "q", Mode.COMBINED, three)
    assert not r.released
    assert r.withheld_reason == (
        "nothing released: 2 of the 3 nodes the template requires answered; not answering: "
        "Wakefield (DEADLINE_EXCEEDED: the node could not be reached)"
    )
    # The nodes that answered spent their budget; the result says so.
    assert r.privacy_spent == Loss("epsilon", 0.5)


def test_nobody_asked_or_nobody_answering_releases_nothing() -> None:
    r = combine(quorum(1), DIGEST, "q", Mode.COMBINED, [])
    assert not r.released and "only 0 node(s) were asked" in r.withheld_reason
    assert r.privacy_spent == Loss("epsilon", 0.0)
    r = combine(quorum(1), DIGEST, "q", Mode.COMBINED, [down("Leeds")])
    assert not r.released and "Leeds (UNAVAILABLE" in r.withheld_reason


def test_an_answer_that_does_not_fit_is_not_counted() -> None:
    good = ok("Leeds", [5] * N)
    full = answer("Bradford", [5] * N, 8.0)
    cut = dataclasses.replace(full.measures["count"], values=(5,) * (N - 1))
    short = Outcome("Bradford", "OK", "", 1.0, dataclasses.replace(full, measures={"count": cut}))
    wrong_org = Outcome("Kirklees", "OK", "", 1.0, answer("Calderdale", [5] * N, 8.0))
    other_template = Outcome(
        "Wakefield",
        "OK",
        "",
        1.0,
        dataclasses.replace(answer("Wakefield", [5] * N, 8.0), template_digest="f" * 64),
    )
    r = combine(quorum(2), DIGEST, "q", Mode.COMBINED, [good, short, wrong_org, other_template])
    assert not r.released
    status = {n.organisation: (n.status, n.message) for n in r.nodes}
    assert status["Leeds"] == ("OK", "")
    assert status["Bradford"][0] == "INTERNAL" and "24 cells" in status["Bradford"][1]
    assert "answered as 'Calderdale'" in status["Kirklees"][1]
    assert "another template" in status["Wakefield"][1]


def test_per_node_cells_only_in_per_node_mode_when_the_template_allows() -> None:
    outcomes = [ok("Leeds", [7] * N), ok("Bradford", [9] * N)]
    per = combine(quorum(2), DIGEST, "q", Mode.PER_NODE, outcomes)
    assert [org for org, _ in per.per_node] == ["Bradford", "Leeds"]
    assert per.per_node[1][1] == outcomes[0].value.cells  # type: ignore[union-attr]
    assert combine(quorum(2), DIGEST, "q", Mode.COMBINED, outcomes).per_node == ()
    closed = dataclasses.replace(
        T1, access=dataclasses.replace(T1.access, quorum=2, per_node_breakdown=False)
    )
    assert combine(closed, DIGEST, "q", Mode.PER_NODE, outcomes).per_node == ()


def test_rho_templates_report_rho() -> None:
    d2 = templates.digest(T2)
    n2 = T2.n_cells
    outcomes = [Outcome(o, "OK", "", 1.0, answer(o, [3] * n2, 4.0, T2)) for o in ("A", "B", "C")]
    r = combine(T2, d2, "q", Mode.COMBINED, outcomes)
    assert r.released and r.privacy_spent.kind == "rho"
    assert r.dimensions == tuple((d.name, d.labels) for d in T2.group_by)
    assert len(r.cells) == n2


def test_a_mean_is_the_ratio_of_the_combined_sum_to_the_combined_count() -> None:
    t = templates.load_toml((ROOT / "examples/templates/absence-by-sen.toml").read_text())
    t = quorum(2, t)
    n = t.n_cells

    def mean_answer(org: str, total: int, count: int) -> Outcome[NodeAnswer]:
        s = results.Measure("sum", (total,) * n, 900.0, 60.0, 70.0)
        c = results.Measure("count", (count,) * n, 4.0, 4.0, 5.0)
        measures = {"sum": s, "count": c}
        a = NodeAnswer(
            org,
            templates.digest(t),
            t.dataset,
            1,
            "mean",
            tuple((d.name, d.labels) for d in t.group_by),
            measures,
            tuple(results.release(t, measures)),
            Loss("epsilon", 1.0),
            1.0,
            False,
        )
        return Outcome(org, "OK", "", 1.0, a)

    r = combine(
        t,
        templates.digest(t),
        "q",
        Mode.COMBINED,
        [mean_answer("A", 1000, 100), mean_answer("B", 3000, 100)],
    )
    assert r.released
    for cell in r.cells:
        assert cell.estimate == pytest.approx(20.0)  # (1000 + 3000) / (100 + 100)
        assert cell.ci95_low < 20.0 < cell.ci95_high
