"""A second reader's check of the ρ the node charges for a secure-aggregation sum.

Nothing here reuses node/privacy.py's formula. Proposition 14 of Kairouz, Liu and
Steinke (arXiv 2102.06387) is recomputed from its statement, as an RDP bound at each
order α, for every integer change Δ a sensitivity allows, and the node's charged ρ
(`secagg_noise_share`) must be at least its sup over α of bound/α. Separately, the
exact Rényi divergence of the sum of t discrete Gaussians is computed numerically and
must stay within α·ρ; at small σ it exceeds the Gaussian figure Δ₂²/(2tσ²), so a
charge without the KLS correction fails here."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from tessera.node import privacy

FloatArray = npt.NDArray[np.float64]
# α = 1 is in the proposition's range [1, ∞); the bound over α is largest there or flat.
ALPHAS = (1.0, 1.001, 1.1, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0, 1e4)
# OpenDP's map and the float formula can differ in the last bits.
ULP = 1e-12


def _tau(sigma: float, n: int) -> float:
    return 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))


def _prop14(alpha: float, sigma: float, n: int, l2: float, l1: float, d: int) -> float:
    """The proposition's bound on D_α of n summed N_Z(0, σ²) per cell, shifted by Δ."""
    tau, s = _tau(sigma, n), math.sqrt(n) * sigma
    return min(
        alpha / 2 * (l2 / s) ** 2 + tau * d,
        alpha / 2 * ((l2 / s) ** 2 + 2 * l1 * tau / s + tau**2 * d),
        alpha / 2 * (l2 / s + tau * math.sqrt(d)) ** 2,
    )


def _changes(l2: float, cells: int) -> list[tuple[int, ...]]:
    """Every nonzero integer change with ‖Δ‖₂ <= l2 in `cells` cells, up to sign and order."""
    limit = l2 * l2 * (1 + ULP)
    out: list[tuple[int, ...]] = []

    def grow(prefix: tuple[int, ...], top: int, squares: int) -> None:
        if prefix:
            out.append(prefix)
        if len(prefix) < cells:
            for v in range(top, 0, -1):
                if squares + v * v <= limit:
                    grow((*prefix, v), v, squares + v * v)

    grow((), math.isqrt(math.floor(limit)), 0)
    return out


def _paper_rho(sigma: float, t: int, l2: float, cells: int, l1: float | None) -> float:
    """The zCDP ρ the proposition gives for the worst allowed Δ. Each Δ is bounded with
    d = its support: cells it leaves unchanged carry the same independent noise on both
    sides and add nothing to D_α."""
    worst = 0.0
    for delta in _changes(l2, cells):
        n1, n2 = sum(delta), math.sqrt(sum(v * v for v in delta))
        if l1 is None or n1 <= l1 * (1 + ULP):
            rho = max(_prop14(a, sigma, t, n2, n1, len(delta)) / a for a in ALPHAS)
            worst = max(worst, rho)
    return worst


SENSITIVITIES = [  # (Δ₂, cells, Δ₁ or None)
    (1.0, 1000, None),
    (math.sqrt(2), 1000, None),
    (math.sqrt(2), 1000, math.sqrt(2)),
    (2.0, 3, None),
    (3.0, 1000, None),
    (3.0, 1000, 3.0),
    (3.0, 1, None),
]
# From σ in the hundreds (the correction vanishes) down to the floor σ = 1/2 (it dominates).
RHOS = (1e-5, 0.02, 0.3, 2.0)


@pytest.mark.parametrize("t", [2, 3, 5, 8, 16])
def test_the_charged_rho_covers_proposition_14_for_every_allowed_change(t: int) -> None:
    scales = []
    for l2, cells, l1 in SENSITIVITIES:
        for rho in RHOS:
            share = privacy.secagg_noise_share(rho, l2, t, cells, l1)
            assert share.scale >= 0.5  # the proposition's condition
            assert share.rho <= rho * (1 + 1e-9)
            bound = _paper_rho(share.scale, t, l2, cells, l1)
            assert share.rho >= bound * (1 - ULP), (l2, cells, l1, rho, share, bound)
            scales.append(share.scale)
    assert min(scales) < 1 and max(scales) > 100  # the grid spans both regimes


def _log_sum_pmf(sigma: float, t: int, width: int) -> FloatArray:
    """log P[Z = z] for z in [-width, width], Z the sum of t draws of N_Z(0, σ²). In logs:
    the tails, where D_α of large α is decided, underflow as probabilities."""
    x = np.arange(-width, width + 1)
    one = -(x.astype(np.float64) ** 2) / (2 * sigma**2)
    one -= np.logaddexp.reduce(one)
    total = one.copy()
    diff = x[:, None] - x[None, :]
    inside = np.abs(diff) <= width
    for _ in range(t - 1):
        # Partial sums beyond `width` lie > 40 standard deviations out; dropping them
        # changes nothing at float precision in the range read back.
        terms = np.where(inside, total[np.clip(diff + width, 0, 2 * width)], -np.inf)
        total = np.logaddexp.reduce(terms + one[None, :], axis=1)
    return np.asarray(total, dtype=np.float64)


def _renyi(log_q: FloatArray, shift: int, alpha: float, width: int, reach: int) -> float:
    """D_α(Z + shift ‖ Z), summing over [-reach, reach] (which holds its mass at α <= 20)."""
    x = np.arange(-reach, reach + 1) + width
    log_p = log_q[x - shift]
    return float(np.logaddexp.reduce(alpha * log_p + (1 - alpha) * log_q[x])) / (alpha - 1)


@pytest.mark.parametrize(
    ("rho", "l2", "t", "changes"),
    [
        (2.0, 1.0, 2, [(1,)]),
        (0.5, 1.0, 16, [(1,)]),
        (0.5, math.sqrt(2), 5, [(1, 1), (1,)]),
        (2.0, 3.0, 16, [(3,), (2, 2, 1), (1,) * 9]),
        (0.05, 1.0, 8, [(1,)]),
        (4.0, 1.0, 16, [(1,)]),
    ],
)
def test_the_exact_renyi_divergence_of_the_sum_is_within_the_charge(
    rho: float, l2: float, t: int, changes: list[tuple[int, ...]]
) -> None:
    share = privacy.secagg_noise_share(rho, l2, t, 1000)
    alphas = (1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
    spread = math.sqrt(t) * share.scale
    reach = int(20 * 3 + 40 * spread)
    width = reach + int(40 * spread) + 4
    log_q = _log_sum_pmf(share.scale, t, width)
    for delta in changes:
        for alpha in alphas:
            # Independent cells: divergences add; unchanged cells add nothing.
            d = sum(_renyi(log_q, v, alpha, width, reach) for v in delta)
            assert d <= alpha * share.rho * (1 + 1e-9), (delta, alpha, d, share)


def test_at_the_smallest_scale_the_gaussian_figure_alone_would_under_charge() -> None:
    """At σ = 1/2 and t = 16 the sum is far from a discrete Gaussian: its D_α exceeds
    OpenDP's Gaussian figure by over 10%, so a charge without the correction fails here."""
    share = privacy.secagg_noise_share(4.0, 1.0, 16, 1)
    assert share.scale == 0.5
    reach, width = 220, 400
    log_q = _log_sum_pmf(share.scale, 16, width)
    worst = max(_renyi(log_q, 1, a, width, reach) / a for a in (1.5, 2.0, 5.0, 20.0))
    assert 1.1 * share.central_rho < worst <= share.rho, (worst, share)
