"""The exact interval arithmetic (tessera.intervals), against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera import intervals as iv
from tessera.intervals import GAUSSIAN, LAPLACE, NoisePart

scales = st.floats(min_value=0.3, max_value=60.0)
mechs = st.sampled_from([LAPLACE, GAUSSIAN])


def brute_pmf(part: NoisePart, reach: int = 0) -> tuple[int, np.ndarray]:
    """(offset, pmf) by summing the unnormalised pmf far into the tails."""
    s = part.scale
    reach = reach or math.ceil(60 * s) + 10
    k = np.arange(-reach, reach + 1, dtype=np.float64)
    w = np.exp(-np.abs(k) / s) if part.mechanism == LAPLACE else np.exp(-(k * k) / (2 * s * s))
    return -reach, w / w.sum()


def brute_sum(parts: list[NoisePart]) -> tuple[int, np.ndarray]:
    off, pmf = 0, np.ones(1)
    for p in parts:
        o, q = brute_pmf(p)
        off, pmf = off + o, np.convolve(pmf, q)
    return off, pmf


def brute_within(off: int, pmf: np.ndarray, a: int, b: int) -> float:
    k = off + np.arange(len(pmf))
    return float(pmf[(k >= a) & (k <= b)].sum())


@settings(max_examples=60, deadline=None)
@given(mechs, scales, st.floats(min_value=0.5, max_value=0.999))
def test_one_part_is_the_narrowest_symmetric_interval(mech: str, s: float, level: float) -> None:
    part = NoisePart(mech, s)
    k, cov = iv.half_width([part], level)
    off, pmf = brute_pmf(part)
    assert cov == pytest.approx(brute_within(off, pmf, -k, k), abs=1e-9)
    assert cov >= level
    if k > 0:
        assert brute_within(off, pmf, -(k - 1), k - 1) < level + 1e-12


@settings(max_examples=40, deadline=None)
@given(scales)
def test_laplace_matches_the_closed_form(s: float) -> None:
    q = math.exp(-1 / s)
    k, cov = iv.half_width([NoisePart(LAPLACE, s)])
    assert cov == pytest.approx(1 - 2 * q ** (k + 1) / (1 + q), abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(mechs, st.floats(min_value=0.5, max_value=15.0)), min_size=2, max_size=4))
def test_a_sum_is_the_convolution(spec: list[tuple[str, float]]) -> None:
    parts = [NoisePart(m, s) for m, s in spec]
    k, cov = iv.half_width(parts)
    off, pmf = brute_sum(parts)
    assert cov == pytest.approx(brute_within(off, pmf, -k, k), abs=1e-9)
    assert cov >= 0.95 > brute_within(off, pmf, -(k - 1), k - 1)
    # the order of independent parts does not matter
    assert iv.half_width(list(reversed(parts))) == (k, cov)


@settings(max_examples=40, deadline=None)
@given(mechs, scales, scales, st.floats(min_value=0.6, max_value=0.99))
def test_monotone_in_scale_and_level(mech: str, a: float, b: float, level: float) -> None:
    lo, hi = sorted((a, b))
    assert (
        iv.half_width([NoisePart(mech, lo)], level)[0]
        <= iv.half_width([NoisePart(mech, hi)], level)[0]
    )
    assert (
        iv.half_width([NoisePart(mech, lo)], level)[0]
        <= iv.half_width([NoisePart(mech, lo)], 0.995)[0]
    )


@settings(max_examples=30, deadline=None)
@given(mechs, scales, st.integers(min_value=0, max_value=200))
def test_the_distribution_is_symmetric(mech: str, s: float, a: int) -> None:
    d = iv.dist([NoisePart(mech, s), NoisePart(mech, s / 2 + 0.1)])
    left = float(d.within(-1e18, -a))
    right = float(d.within(a, 1e18))
    assert left == pytest.approx(right, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(mechs, st.floats(min_value=0.5, max_value=8.0), st.integers(min_value=2, max_value=12))
def test_rounded_intervals_cover_at_least_their_level_wherever_the_truth_is(
    mech: str, s: float, step: int
) -> None:
    """Brute force over the truth's position in a step and every noise value, through
    the release rule `rounded` itself: the reported level is the worst case, exactly."""
    part = NoisePart(mech, s)
    k, level = iv.half_width([part], 0.95, step)
    off, pmf = brute_pmf(part, reach=math.ceil(40 * s) + 20)
    worst = 1.0
    for r in range(step):
        x = 10 * step * 100 + r  # far from zero: no clamping
        cov = 0.0
        for i, p in enumerate(pmf):
            lo, hi = iv.rounded(x + off + i, k, step, True)
            if lo <= x <= hi:
                cov += p
        assert cov >= level - 1e-9
        worst = min(worst, cov)
    assert worst == pytest.approx(level, abs=1e-9)
    assert level >= 0.95
    # and k is the smallest such half-width
    if k > 0:
        assert iv._half_width((part,), 0.95, step)[0] == k
        assert k <= iv.half_width([part], 0.95, 1)[0]


def test_the_gaussian_approximation_above_the_exact_range_is_far_inside_tolerance() -> None:
    """Above EXACT_GAUSSIAN the tail is the midpoint-rule normal: compare it with the
    exact normalised sum at a scale just above (bin masses and the 95% coverage)."""
    s = 1500.0
    part = NoisePart(GAUSSIAN, s)
    g = iv._grid((part,), iv._MAX_BINS)
    start, approx = iv._part_bins(part, g)
    reach = iv._reach(part)
    exact = iv._exact_pmf(part, reach)
    first = -reach - int(start)
    padded = np.zeros(len(approx) * g)
    padded[first : first + len(exact)] = exact
    exact_bins = padded.reshape(-1, g).sum(axis=1)
    # the midpoint rule's error bound, |φ'|max / 24 = 0.0101/σ²
    assert np.abs(np.cumsum(approx) - np.cumsum(exact_bins)).max() < 0.011 / s**2
    k, cov = iv.half_width([part])
    assert cov == pytest.approx(0.95, abs=2e-4)
    assert k == pytest.approx(1.959964 * s, rel=2e-3)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("mech", [LAPLACE, GAUSSIAN])
def test_very_wide_noise_has_a_bounded_cost_and_a_tight_bound(mech: str, n: int) -> None:
    """Scales of 1e12 (a sum over the widest bounds): a coarse grid, still a lower bound
    within a few hundredths of a point, and a half-width within 0.5% of exact."""
    s = 1e12
    k, cov = iv.half_width([NoisePart(mech, s)] * n)
    assert 0.95 <= cov < 0.9505
    if n == 1 and mech == LAPLACE:
        exact_k = s * math.log(2 / (0.05 * (1 + math.exp(-1 / s)))) - 1
        assert k == pytest.approx(exact_k, rel=1e-3)
    if mech == GAUSSIAN:
        assert k == pytest.approx(1.959964 * s * math.sqrt(n), rel=5e-3)


def test_bad_parts_are_refused() -> None:
    with pytest.raises(ValueError, match="mechanism"):
        NoisePart("laplace", 1.0)
    for bad in (0.0, -1.0, 1e31, math.inf, math.nan):
        with pytest.raises(ValueError, match="scale"):
            NoisePart(LAPLACE, bad)
    with pytest.raises(ValueError):
        iv.half_width([])


# -- means ---------------------------------------------------------------------------


def test_a_mean_interval_is_exact_at_the_truth_by_enumeration() -> None:
    """Enumerate every (η_s, η_c) of small noises: the coverage at the true ratio is at
    least 95% and not far above."""
    sp, cp = NoisePart(LAPLACE, 3.0), NoisePart(LAPLACE, 0.6)
    S, C, lower, upper = 80, 20, 0.0, 10.0
    so, spmf = brute_pmf(sp, reach=60)
    co, cpmf = brute_pmf(cp, reach=12)
    cov = 0.0
    for j, pc in enumerate(cpmf):
        c = C + co + j
        for i, ps in enumerate(spmf):
            lo, hi = iv.mean_interval(S + so + i, c, [sp], [cp], lower, upper)
            if lo <= S / C <= hi:
                cov += pc * ps
    assert 0.95 <= cov < 0.975


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=-500, max_value=3000),
    st.integers(min_value=1, max_value=400),
    st.floats(min_value=1.0, max_value=30.0),
)
def test_a_mean_interval_is_inside_the_bounds_and_holds_the_clamped_ratio(
    s: int, c: int, scale: float
) -> None:
    lo, hi = iv.mean_interval(
        s, c, [NoisePart(LAPLACE, scale * 10)], [NoisePart(LAPLACE, scale)], 0, 20
    )
    assert 0 <= lo <= hi <= 20
    r = min(max(s / c, 0), 20)
    assert lo - 1e-9 <= r <= hi + 1e-9


def test_a_mean_interval_narrows_as_the_count_grows() -> None:
    sp, cp = [NoisePart(LAPLACE, 300.0)], [NoisePart(LAPLACE, 2.0)]
    widths = []
    for c in (20, 100, 500, 2500):
        lo, hi = iv.mean_interval(7 * c, c, sp, cp, 0, 150)
        widths.append(hi - lo)
        assert lo <= 7 <= hi
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < 1.0
