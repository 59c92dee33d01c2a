"""Post-processing (tessera.results): intervals from the exact noise, suppressed cells,
combining, means, and reading the node's stored payload."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera import intervals, results, templates
from tessera.intervals import GAUSSIAN, LAPLACE, NoisePart
from tessera.node import privacy
from tessera.templates.model import CategoriesDim, Category, Output, Template

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "templates"


def _template(name: str, cells: int, **output: int) -> Template:
    t = templates.load_toml((EXAMPLES / f"{name}.toml").read_text())
    dim = CategoriesDim("cell", "x", tuple(Category(f"c{i}", (str(i),)) for i in range(cells)))
    out = dataclasses.replace(t.output, **output) if output else t.output
    return dataclasses.replace(t, group_by=(dim,), output=out)


def _count(values: list[int], part: NoisePart) -> results.Measure:
    return results.measure_from_noise("count", values, 1.0, [part])


def _pmf(part: NoisePart, reach: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(-reach, reach + 1)
    s = part.scale
    w = np.exp(-np.abs(k) / s) if part.mechanism == LAPLACE else np.exp(-(k * k) / (2 * s * s))
    return k, w / w.sum()


def test_a_count_cell_carries_the_exact_interval_and_level() -> None:
    t = _template("cla-by-age-and-placement", 3, min_count=0)
    part = NoisePart(LAPLACE, 2.0)
    cells = results.release(t, {"count": _count([40, 3, -4], part)})
    k, level = intervals.half_width([part])
    assert [(c.ci95_low, c.ci95_high) for c in cells] == [(40 - k, 40 + k), (0, 3 + k), (0, k - 4)]
    assert [c.estimate for c in cells] == [40.0, 3.0, 0.0]
    assert all(c.coverage == math.floor(level * 1e6) / 1e6 for c in cells)
    assert 0.95 <= cells[0].coverage <= level


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=60), st.integers(min_value=1, max_value=25))
def test_the_largest_suppressed_value_is_the_suppression_boundary(
    min_count: int, step: int
) -> None:
    v_max = results.largest_suppressed(min_count, step)
    for v in range(-5, min_count + 2 * step + 2):
        est = results._estimate(v, step, True)
        assert (est < min_count) == (v_max is not None and v <= v_max)


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from([LAPLACE, GAUSSIAN]),
    st.floats(min_value=0.7, max_value=5.0),
    st.integers(min_value=1, max_value=12),
    st.sampled_from([1, 2, 5]),
)
def test_a_suppressed_cell_never_covers_less_than_an_ordinary_one(
    mech: str, s: float, min_count: int, step: int
) -> None:
    """At every truth, by enumeration of the noise through `release`: suppressed cells
    show one interval whatever their noisy value, and with them the cell covers at
    least the reported level (and never less than without suppression)."""
    part = NoisePart(mech, s)
    reach = math.ceil(30 * s) + 5
    k, pmf = _pmf(part, reach)
    supp = _template("cla-by-age-and-placement", len(k), min_count=min_count, round_to=step)
    plain = _template("cla-by-age-and-placement", len(k), min_count=0, round_to=step)
    for x in range(0, min_count + 3 * step + 12):
        m = _count([int(x + z) for z in k], part)
        cells = results.release(supp, {"count": m})
        ordinary = results.release(plain, {"count": m})
        shown = {(c.ci95_low, c.ci95_high) for c in cells if c.suppressed}
        assert len(shown) <= 1
        cover = float(sum(p for c, p in zip(cells, pmf) if c.ci95_low <= x <= c.ci95_high))
        base = float(sum(p for c, p in zip(ordinary, pmf) if c.ci95_low <= x <= c.ci95_high))
        assert cover >= base - 1e-12
        assert cover >= cells[0].coverage - 1e-9


def test_the_issues_case_truth_six_is_covered() -> None:
    """ε = 0.5, min_count 5, truth 6: the old [0, 5] missed 23% of the time."""
    t = _template("cla-by-age-and-placement", 1)
    (cal,) = privacy.calibrate(t.privacy, {"count": privacy.Sensitivity(1.0, 1.0)})
    part = NoisePart(results.mechanism(cal.kind), cal.scale)
    k, pmf = _pmf(part, 80)
    cover = 0.0
    for z, p in zip(k, pmf):
        (c,) = results.release(t, {"count": _count([int(6 + z)], part)})
        cover += p * (c.ci95_low <= 6 <= c.ci95_high)
    assert cover >= 0.95


def test_combining_lists_the_parts_and_convolves() -> None:
    a = {"count": _count([10, 20], NoisePart(LAPLACE, 2.0))}
    b = {"count": _count([5, 7], NoisePart(LAPLACE, 3.0))}
    m = results.combine([a, b])["count"]
    assert m.values == (15, 27)
    assert sorted(m.noise) == [NoisePart(LAPLACE, 2.0), NoisePart(LAPLACE, 3.0)]
    k, _ = intervals.half_width(m.noise)
    assert m.ci95_half_width == k
    # legacy measures (no distribution) keep the conservative root-sum-square rule
    old = results.combine([{"count": results.Measure("count", (1,), 4.0, 4.0, 5.0)}] * 2)["count"]
    assert old.noise == () and old.ci95_half_width == pytest.approx(math.sqrt(32))


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(["epsilon", "rho"]), st.floats(min_value=0.2, max_value=1e7))
def test_a_stored_payload_without_the_scale_gets_it_back_from_the_variance(
    kind: str, scale: float
) -> None:
    stored = {
        "name": "count",
        "values": [3, 4],
        "variance": privacy.noise_variance(kind, scale),
        "ci95": 1.0,
        "ci975": 2.0,
    }
    m = results.measure_from_stored(stored, kind)
    (part,) = m.noise
    assert part.mechanism == results.mechanism(kind)
    assert part.scale == pytest.approx(scale, rel=1e-6)
    stored |= {"mechanism": part.mechanism, "scale": scale}
    assert results.measure_from_stored(stored, kind).noise == (NoisePart(part.mechanism, scale),)


def test_a_mean_cell() -> None:
    t = _template("absence-by-sen", 3)
    sp, cp = NoisePart(LAPLACE, 900.0), NoisePart(LAPLACE, 6.0)
    s = results.measure_from_noise("sum", [1400 * 4, 50, 900], 1.0, [sp])
    c = results.measure_from_noise("count", [200 * 4, 3, 100], 1.0, [cp])
    big, small, mid = results.release(t, {"sum": s, "count": c})
    assert small.suppressed and (small.ci95_low, small.ci95_high) == (0.0, 150.0)
    assert not big.suppressed and big.ci95_low <= big.estimate == 7.0 <= big.ci95_high
    assert big.ci95_high - big.ci95_low < mid.ci95_high - mid.ci95_low
    for cell in (big, mid):
        assert cell.coverage == 0.95
        assert cell.ci95_low == round(cell.ci95_low, 3) and 0 <= cell.ci95_low
    lo, hi = intervals.mean_interval(1400 * 4, 800, [sp], [cp], 0, 150)
    assert big.ci95_low <= lo and hi <= big.ci95_high  # rounded outwards


def test_output_rules() -> None:
    assert _template("cla-by-age-and-placement", 2, round_to=5).output == Output(5, 5)


def test_the_coordinator_refuses_an_answer_whose_noise_does_not_fit() -> None:
    from tessera.coordinator.combine import check_answer
    from tessera.coordinator.model import Loss, NodeAnswer

    t = templates.load_toml((EXAMPLES / "cla-by-age-and-placement.toml").read_text())
    digest = templates.digest(t)

    def answer(noise: list[NoisePart]) -> NodeAnswer:
        m = results.Measure("count", (5,) * t.n_cells, 8.0, 6.0, 7.0, tuple(noise))
        return NodeAnswer(
            organisation="Leeds",
            template_digest=digest,
            dataset=t.dataset,
            dataset_version=1,
            statistic=t.statistic.kind.value,
            dimensions=tuple((d.name, d.labels) for d in t.group_by),
            measures={"count": m},
            cells=tuple(results.release(t, {"count": m})),
            cost=Loss("epsilon", 0.5),
            charged=0.5,
            from_cache=False,
        )

    assert check_answer(t, digest, "Leeds", answer([NoisePart(LAPLACE, 2.0)])) is None
    assert check_answer(t, digest, "Leeds", answer([])) is None  # an older node
    for bad in ([NoisePart(GAUSSIAN, 2.0)], [NoisePart(LAPLACE, 2.0)] * 2):
        why = check_answer(t, digest, "Leeds", answer(bad))
        assert why is not None and "noise" in why
