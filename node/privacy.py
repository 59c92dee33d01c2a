"""Noise and privacy loss: the only module of the node that imports OpenDP.

Aggregation happens in DuckDB; OpenDP gets only the small vector of exact cell
values. For each released measure the noise scale is found with OpenDP's
binary search so that the privacy map, at the sensitivity the template's
bounds imply, stays within the template's declared cost. The loss charged is
what that map says. Pure ε uses discrete Laplace (L1); ρ uses discrete
Gaussian under zCDP (L2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import opendp.prelude as dp
from opendp.accuracy import (
    discrete_gaussian_scale_to_accuracy,
    discrete_laplacian_scale_to_accuracy,
)

from tessera.templates.model import Privacy, Sensitivity

# "honest-but-curious" admits the constant-loss measurements the accountant composes
# (`_spent`): their privacy maps return figures OpenDP itself computed.
dp.enable_features("contrib", "honest-but-curious")

IntVector = npt.NDArray[np.int64]
# OpenDP's float maps can land a hair above the nominal value (see dependency notes).
_TOLERANCE = 1e-9
# OpenDP's discrete Gaussian accuracy walks the distribution one integer at a time: about
# 0.4 s at scale 1e6, hours at the 1e11 that the template language's widest bounds can
# need. Such noise swamps any answer; the template is refused instead of hanging a worker.
MAX_GAUSSIAN_SCALE = 1e6


class CalibrationError(ValueError):
    """A declared cost that no usable mechanism meets at the template's sensitivity."""


@dataclass(frozen=True)
class Loss:
    kind: str  # "epsilon" or "rho"
    value: float


@dataclass(frozen=True)
class NoisyVector:
    name: str
    values: IntVector
    scale: float
    variance: float
    ci95_half_width: float
    ci975_half_width: float


@dataclass(frozen=True)
class Calibration:
    """A measure's mechanism, ready to apply: scale and the loss OpenDP's map gives."""

    name: str
    kind: str
    scale: float
    sensitivity: Sensitivity
    loss: float


@lru_cache(maxsize=1)
def _vectors() -> Any:
    return dp.vector_domain(dp.atom_domain(T="i64"))


def _laplace(scale: float) -> Any:
    return dp.m.make_laplace(_vectors(), dp.l1_distance(T="i64"), scale=scale)


def _gaussian(scale: float) -> Any:
    return dp.m.make_gaussian(_vectors(), dp.l2_distance(T="f64"), scale=scale)


def _int64s(exact: IntVector) -> IntVector:
    # OpenDP reads a contiguous int64 array without converting it element by element.
    return np.ascontiguousarray(exact, dtype=np.int64)


@lru_cache(maxsize=256)
def _mechanism(kind: str, scale: float) -> Any:
    # A calibrated template's scale repeats at every answer: building the measurement
    # costs more than drawing from it. (Not for the calibration search's many scales.)
    return _laplace(scale) if kind == "epsilon" else _gaussian(scale)


def _d_in(kind: str, s: Sensitivity) -> Any:
    # L1 sensitivities of integer vectors are whole numbers; L2 may not be.
    return round(s.l1) if kind == "epsilon" else float(s.l2)


@lru_cache(maxsize=1024)
def _calibrate(kind: str, l1: float, l2: float, budget: float) -> tuple[float, float]:
    make = _laplace if kind == "epsilon" else _gaussian
    d_in = _d_in(kind, Sensitivity(l1, l2))
    try:
        # A cost so small for its sensitivity that no finite scale meets it makes OpenDP's
        # search fail ("scale must not be negative").
        scale = float(dp.binary_search_param(make, d_in=d_in, d_out=budget))
        loss = float(make(scale).map(d_in))
    except dp.OpenDPException:
        raise CalibrationError(
            f"no noise scale meets {kind} {budget:g} at sensitivity {d_in:g}"
        ) from None
    if loss > budget * (1 + _TOLERANCE):
        raise CalibrationError("OpenDP could not calibrate a mechanism within the declared cost")
    if kind == "rho" and scale > MAX_GAUSSIAN_SCALE:
        raise CalibrationError(
            f"the noise scale needed ({scale:.3g}) is above {MAX_GAUSSIAN_SCALE:g}; "
            "narrow the bounds or raise rho"
        )
    return scale, loss


def calibrate(privacy: Privacy, sensitivities: dict[str, Sensitivity]) -> list[Calibration]:
    """Split the template's cost evenly over its measures and calibrate each."""
    kind, total = (
        ("epsilon", privacy.epsilon) if privacy.epsilon is not None else ("rho", privacy.rho)
    )
    assert total is not None
    share = total / len(sensitivities)
    out = []
    for name, s in sensitivities.items():
        scale, loss = _calibrate(kind, s.l1, s.l2, share)
        out.append(Calibration(name, kind, scale, s, loss))
    return out


def total_loss(calibrations: list[Calibration]) -> Loss:
    """Measures are released together: their losses add (basic composition,
    which holds for pure ε and for zCDP ρ alike)."""
    return Loss(calibrations[0].kind, math.fsum(c.loss for c in calibrations))


def add_noise(calibration: Calibration, exact: IntVector) -> NoisyVector:
    mechanism = _mechanism(calibration.kind, calibration.scale)
    noisy = np.asarray(mechanism(_int64s(exact)), dtype=np.int64)
    return NoisyVector(
        name=calibration.name,
        values=noisy,
        scale=calibration.scale,
        variance=noise_variance(calibration.kind, calibration.scale),
        ci95_half_width=_accuracy(calibration.kind, calibration.scale, 0.05),
        ci975_half_width=_accuracy(calibration.kind, calibration.scale, 0.025),
    )


@lru_cache(maxsize=1024)
def _accuracy(kind: str, scale: float, alpha: float) -> float:
    if kind == "epsilon":
        return float(discrete_laplacian_scale_to_accuracy(scale, alpha))
    return float(discrete_gaussian_scale_to_accuracy(scale, alpha))


def noise_variance(kind: str, scale: float) -> float:
    """Variance of one cell's noise: exact for discrete Laplace; σ² bounds the
    discrete Gaussian's variance from above."""
    if kind == "epsilon":
        q = math.exp(-1.0 / scale)
        return 2 * q / (1 - q) ** 2
    return scale * scale


# -- accounting: every figure in zCDP ρ, composed by OpenDP ----------------------------


@lru_cache(maxsize=1)
def _spent_space() -> tuple[Any, Any, Any]:
    return dp.atom_domain(T=bool), dp.symmetric_distance(), dp.zero_concentrated_divergence()


def _spent(rho: float) -> Any:
    """A measurement standing for a release already made, whose loss is `rho`."""
    return dp.m.make_user_measurement(
        *_spent_space(),
        function=lambda x: x,
        privacy_map=lambda d_in: rho,
    )


def _spent_pure(epsilon: float) -> Any:
    return dp.m.make_user_measurement(
        dp.atom_domain(T=bool),
        dp.symmetric_distance(),
        dp.max_divergence(),
        function=lambda x: x,
        privacy_map=lambda d_in: epsilon,
    )


def measure_rho(c: Calibration) -> float:
    """One measure's loss in zCDP: OpenDP's map of the discrete Gaussian, or of the
    discrete Laplace converted by `make_pureDP_to_zCDP` (ρ = ε²/2)."""
    d_in = _d_in(c.kind, c.sensitivity)
    if c.kind == "epsilon":
        converted: Any = dp.c.make_pureDP_to_zCDP(_laplace(c.scale))
        return float(converted.map(d_in))
    return float(_gaussian(c.scale).map(d_in))


def compose_rho(rhos: list[float]) -> float:
    """The zCDP loss of releasing all of `rhos` (OpenDP's composition)."""
    rhos = [r for r in rhos if r > 0]
    if not rhos:
        return 0.0
    if len(rhos) == 1:
        return rhos[0]
    return _compose(tuple(rhos))


@lru_cache(maxsize=1024)
def _compose(rhos: tuple[float, ...]) -> float:
    # Pure in its inputs, and OpenDP's map costs ~0.4 ms: a paid answer composes the
    # same (spent, cost) pair twice, in the early check and in the ledger's commit.
    composed: Any = dp.c.make_composition([_spent(r) for r in rhos])
    return float(composed.map(1))


def release_rho(calibrations: list[Calibration]) -> float:
    """A release's loss in zCDP: its measures' losses, converted and composed."""
    return _release_rho(tuple(calibrations))


@lru_cache(maxsize=1024)
def _release_rho(calibrations: tuple[Calibration, ...]) -> float:
    return compose_rho([measure_rho(c) for c in calibrations])


def pure_to_rho(epsilon: float) -> float:
    """ρ of a pure ε-DP release as OpenDP converts it (for ledgers that recorded only ε)."""
    converted: Any = dp.c.make_pureDP_to_zCDP(_spent_pure(epsilon))
    return float(converted.map(1))


@lru_cache(maxsize=1024)
def approx_epsilon(rho: float, delta: float) -> float:
    """ε at `delta` for a zCDP loss of `rho` (OpenDP's `make_zCDP_to_approxDP`)."""
    if rho <= 0:
        return 0.0
    m: Any = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(_spent(rho)), delta)
    eps, _ = m.map(1)
    return float(eps)


# -- secure aggregation: one node's share of a distributed discrete Gaussian ---------


@dataclass(frozen=True)
class NoiseShare:
    """One node's noise for a secure-aggregation sum that meets `rho` with >= t shares.

    The sum Z of t independent discrete Gaussians of scale σ is not itself a discrete
    Gaussian. Kairouz, Liu and Steinke (ICML 2021; Proposition 14 of arXiv
    2102.06387) bound it: for σ >= 1/2, integer Δ with ‖Δ‖₂ <= Δ₂, ‖Δ‖₁ <= Δ₁ in d
    cells, and every α >= 1, D_α(Z + Δ ‖ Z) is at most the least of
        α/2·a² + τd,   α/2·(a² + 2Δ₁τ/(√t·σ) + τ²d),   α/2·(a + τ√d)²,
    where a = Δ₂/(√t·σ) and τ = 10·Σ_{k=1}^{t-1} exp(-2π²σ²·k/(k+1)). Each is at most
    α·ρᵢ for all α >= 1 (the first because τd <= α·τd), so the sum is ρ-zCDP with
    ρ = min(a²/2 + τd, a²/2 + Δ₁τ/(√t·σ) + τ²d/2, (a + τ√d)²/2).
    a²/2 is OpenDP's map of one discrete Gaussian of scale σ√t (`central_rho`); the
    rest (`excess_rho`) is computed here from the formula. Rényi divergences of
    independent cells add, and a cell that neighbouring datasets leave unchanged adds
    nothing, so d is the most cells one unit can change: an integer change of L2 norm
    at most Δ₂ touches at most ⌊Δ₂²⌋ cells (`support`), and has ‖Δ‖₁ <= Δ₂². More
    than t contributors only add independent noise, which cannot raise ρ
    (post-processing)."""

    scale: float
    threshold: int
    cells: int
    support: int
    central_rho: float
    excess_rho: float
    rho: float


def _kls_rho(central: float, scale: float, l1: float, threshold: int, support: int) -> float:
    """KLS's ρ for the t-node sum, given OpenDP's ρ of the Gaussian part (see NoiseShare)."""
    tau = 10 * math.fsum(
        math.exp(-2 * math.pi**2 * scale**2 * k / (k + 1)) for k in range(1, threshold)
    )
    a = math.sqrt(2 * central)
    d = float(support)
    return min(
        central + tau * d,
        central + l1 * tau / (math.sqrt(threshold) * scale) + tau * tau * d / 2,
        (a + tau * math.sqrt(d)) ** 2 / 2,
    )


def _noise_share_rho(
    scale: float, l1: float, l2: float, threshold: int, support: int
) -> tuple[float, float]:
    central = float(_gaussian(scale * math.sqrt(threshold)).map(float(l2)))
    # Never below OpenDP's own figure, even where τ rounds to zero.
    return central, max(0.0, _kls_rho(central, scale, l1, threshold, support) - central)


def secagg_noise_share(
    rho: float, l2: float, threshold: int, cells: int, l1: float | None = None
) -> NoiseShare:
    """The smallest per-node scale (to bisection precision) whose t-node sum meets `rho`."""
    return _secagg_noise_share(float(rho), float(l2), threshold, cells, l1)


@lru_cache(maxsize=1024)
def _secagg_noise_share(
    rho: float, l2: float, threshold: int, cells: int, l1: float | None
) -> NoiseShare:
    # Pure in its inputs, and its bisection costs ~50 ms of OpenDP maps: a node would
    # otherwise pay that at every session's join.
    if threshold < 2 or cells < 1:
        raise CalibrationError("secure aggregation needs a threshold of at least 2")
    central_scale, _ = _calibrate("rho", float(l2), float(l2), float(rho))
    limit = rho * (1 + _TOLERANCE)
    support = max(1, min(cells, math.floor(l2 * l2 * (1 + _TOLERANCE))))
    l1_bound = l2 * l2 if l1 is None else min(float(l1), l2 * l2)

    def total(s: float) -> float:
        return math.fsum(_noise_share_rho(s, l1_bound, l2, threshold, support))

    # KLS's bound needs σ >= 1/2; a larger σ only adds noise.
    low = max(central_scale / math.sqrt(threshold), 0.5)
    scale = low
    if total(low) > limit:
        high = low * 2
        while total(high) > limit:
            high *= 2
            if high > MAX_GAUSSIAN_SCALE:
                raise CalibrationError("no per-node noise scale meets the declared rho")
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (low, mid) if total(mid) <= limit else (mid, high)
        scale = high
    central, excess = _noise_share_rho(scale, l1_bound, l2, threshold, support)
    if central + excess > limit:
        raise CalibrationError("OpenDP could not calibrate a noise share within the declared rho")
    return NoiseShare(scale, threshold, cells, support, central, excess, central + excess)


def add_noise_share(share: NoiseShare, exact: IntVector) -> IntVector:
    """This node's exact cells plus its discrete Gaussian share (OpenDP's draw)."""
    if exact.shape != (share.cells,):
        raise CalibrationError("the vector does not have the calibrated number of cells")
    drawn = _mechanism("rho", share.scale)(_int64s(exact))
    return np.asarray(drawn, dtype=np.int64)


# -- overlap counting (tessera.overlap): dummy elements for the counter's view ----------


@dataclass(frozen=True)
class OverlapDummies:
    counts: IntVector  # per view cell, >= 0
    shift: int
    scale: float
    variance: float
    epsilon: float  # OpenDP's map at L1 sensitivity 2
    delta: float  # chance that some cell's draw was clamped at zero (union over cells)


def overlap_dummies(epsilon: float, cells: int, alpha: float = 1e-10) -> OverlapDummies:
    """Dummy counts for private set intersection cardinality: shift + discrete Laplace
    per cell of the counter's view. One child added to or removed from one agency moves
    between at most two cells (L1 sensitivity 2). The shift is the noise's accuracy at
    `alpha` (OpenDP), plus one, so a cell's draw is clamped at zero with probability at
    most `alpha`."""
    scale, loss = _calibrate("epsilon", 2.0, math.sqrt(2.0), epsilon)
    shift = math.ceil(_accuracy("epsilon", scale, alpha)) + 1
    drawn = np.asarray(_laplace(scale)([shift] * cells), dtype=np.int64)
    return OverlapDummies(
        counts=np.maximum(drawn, 0),
        shift=shift,
        scale=scale,
        variance=noise_variance("epsilon", scale),
        epsilon=loss,
        delta=min(1.0, cells * alpha),
    )


def overlap_counts(epsilon: float, exact: list[int]) -> list[int]:
    """A party's "not linkable" counts with discrete Laplace noise for L1 sensitivity 1
    (one child is one row per agency)."""
    scale, _ = _calibrate("epsilon", 1.0, 1.0, epsilon)
    return [int(x) for x in _laplace(scale)([int(v) for v in exact])]


def overlap_charge(epsilon: float) -> tuple[float, float]:
    """(ε of the counter's view at L1 sensitivity 2, ε of one party's not-linkable counts
    at sensitivity 1): OpenDP's maps of the mechanisms overlap_dummies and overlap_counts
    calibrate. Every party pays both: its children are in the view, and its own counts."""
    _, view = _calibrate("epsilon", 2.0, math.sqrt(2.0), epsilon)
    _, counts = _calibrate("epsilon", 1.0, 1.0, epsilon)
    return view, counts


def overlap_scale(epsilon: float) -> float:
    """The discrete Laplace scale of one view cell's dummies (as overlap_dummies draws)."""
    return _calibrate("epsilon", 2.0, math.sqrt(2.0), epsilon)[0]
