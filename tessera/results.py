"""Post-processing and combining of noisy answers. No noise is drawn here.

Post-processing comes after the noise and costs no privacy: clamp at zero, round,
suppress small counts and attach 95% intervals. Each measure carries its noise
distribution (mechanism and scale per contributing node), and every interval is
computed from the exact distribution of that noise (`tessera.intervals`): the
narrowest symmetric interval whose guaranteed coverage is at least 95%, with the
guaranteed level reported on the cell. Combining adds nodes' noisy vectors and
lists their noise parts; a combined interval comes from the parts' convolution.

A measure without its distribution (from a node that predates it) falls back to
the OpenDP half-widths it carries, which over-cover, and reports the nominal 95%.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tessera import intervals
from tessera.intervals import LEVEL as LEVEL
from tessera.intervals import NoisePart as NoisePart
from tessera.templates.model import StatisticKind, Template

Z95 = 1.959963984540054
Z975 = 2.241402727604947


@dataclass(frozen=True)
class Measure:
    """One noisy integer vector over the cells, with its per-cell noise figures.

    `noise` lists the independent noise parts added to every cell (one per node that
    contributed); the half-widths are the 95% and 97.5% figures they imply."""

    name: str
    values: tuple[int, ...]
    variance: float
    ci95_half_width: float
    ci975_half_width: float
    noise: tuple[NoisePart, ...] = ()


@dataclass(frozen=True)
class Cell:
    labels: tuple[str, ...]
    estimate: float
    ci95_low: float
    ci95_high: float
    suppressed: bool
    # The interval's guaranteed coverage: at least 0.95, more when discreteness forces it.
    coverage: float = LEVEL


def measure_from_noise(
    name: str, values: Sequence[int], variance: float, noise: Sequence[NoisePart]
) -> Measure:
    """A measure whose half-widths are the exact ones of its noise."""
    parts = tuple(noise)
    ci95, _ = intervals.half_width(parts, LEVEL)
    ci975, _ = intervals.half_width(parts, 0.975)
    return Measure(name, tuple(int(v) for v in values), variance, ci95, ci975, parts)


def mechanism(kind: str) -> str:
    """The noise mechanism a node uses for a loss kind ("epsilon" or "rho")."""
    if kind == "epsilon":
        return intervals.LAPLACE
    if kind == "rho":
        return intervals.GAUSSIAN
    raise ValueError(f"unknown loss kind {kind!r}")


def _scale_from_variance(mech: str, variance: float) -> float:
    """Invert the node's variance figure (exact for discrete Laplace, σ² for discrete
    Gaussian): for payloads stored before the scale was."""
    if not (variance > 0 and math.isfinite(variance)):
        raise ValueError("a noise variance must be positive and finite")
    if mech == intervals.GAUSSIAN:
        return math.sqrt(variance)
    # variance = 2q/(1-q)^2 with q = exp(-1/scale), so q = v / (v + 1 + sqrt(2v + 1))
    return 1.0 / math.log1p((1 + math.sqrt(2 * variance + 1)) / variance)


def measure_from_stored(m: Mapping[str, Any], kind: str) -> Measure:
    """A node's measure from its stored payload entry ({"name", "values", "variance",
    "ci95", "ci975", and "mechanism"/"scale" since they were recorded}). The half-widths
    are recomputed from the noise, exactly."""
    variance = float(m["variance"])
    if "mechanism" in m:
        part = NoisePart(str(m["mechanism"]), float(m["scale"]))
    else:
        mech = mechanism(kind)
        part = NoisePart(mech, _scale_from_variance(mech, variance))
    return measure_from_noise(str(m["name"]), m["values"], variance, (part,))


def cell_labels(template: Template) -> list[tuple[str, ...]]:
    """Labels of every cell of the domain, in row-major order."""
    out: list[tuple[str, ...]] = [()]
    for dim in template.group_by:
        out = [(*prefix, label) for prefix in out for label in dim.labels]
    return out


def combine(answers: Sequence[Mapping[str, Measure]]) -> dict[str, Measure]:
    """Sum the nodes' noisy vectors; variances add and the noise parts are listed."""
    if not answers:
        raise ValueError("nothing to combine")
    names = list(answers[0])
    out = {}
    for name in names:
        parts = [a[name] for a in answers]
        n = len(parts[0].values)
        if any(len(p.values) != n for p in parts):
            raise ValueError("answers have different domains")
        values = tuple(sum(p.values[i] for p in parts) for i in range(n))
        var = math.fsum(p.variance for p in parts)
        if len(parts) == 1:
            out[name] = parts[0]
        elif all(p.noise for p in parts):
            noise = tuple(x for p in parts for x in p.noise)
            out[name] = measure_from_noise(name, values, var, noise)
        else:
            # Legacy: the root-sum-square of the nodes' half-widths (over-covers).
            ci95 = max(Z95 * math.sqrt(var), _rss(p.ci95_half_width for p in parts))
            ci975 = max(Z975 * math.sqrt(var), _rss(p.ci975_half_width for p in parts))
            out[name] = Measure(name, values, var, ci95, ci975)
    return out


def _rss(xs: Iterable[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in xs))


def _round(x: float, step: int) -> float:
    return float(step * round(x / step))


def _estimate(v: int, step: int, nonnegative: bool) -> float:
    return _round(max(float(v), 0.0) if nonnegative else float(v), step)


@lru_cache(maxsize=1024)
def largest_suppressed(min_count: int, step: int) -> int | None:
    """The largest noisy count whose released estimate (clamped, rounded) is below
    min_count, or None when nothing is suppressed. Estimates rise with the noisy
    value, so everything at or below it is suppressed and nothing above."""
    if min_count <= 0:
        return None
    v = min_count + step
    while _estimate(v, step, True) >= min_count:
        v -= 1
    return v


def release(template: Template, measures: Mapping[str, Measure]) -> list[Cell]:
    """The analyst-facing cells for a template, from (possibly combined) noisy measures."""
    labels = cell_labels(template)
    stat = template.statistic
    out_rules = template.output
    step = out_rules.round_to
    if stat.kind is StatisticKind.MEAN:
        return [
            _mean_cell(lab, measures["sum"], measures["count"], i, template)
            for i, lab in enumerate(labels)
        ]
    m = measures["count"] if "count" in measures else measures["sum"]
    nonneg = stat.kind is not StatisticKind.SUM or stat.lower >= 0
    is_count = stat.kind is not StatisticKind.SUM
    k: float
    if m.noise:
        k, exact = intervals.half_width(m.noise, LEVEL, step)
        level = math.floor(exact * 1e6) / 1e6  # shown to six places, never overstated
    else:
        k, level = m.ci95_half_width, LEVEL  # legacy: OpenDP's half-width, nominal level
    v_max = largest_suppressed(out_rules.min_count, step) if is_count else None
    cells = []
    for i, lab in enumerate(labels):
        v = m.values[i]
        est = _estimate(v, step, nonneg)
        if v_max is not None and v <= v_max:
            # The interval of the largest suppressed noisy value contains the interval
            # of every suppressed value, so it covers at least as often, and reveals
            # nothing about where the noisy value fell.
            _, hi = intervals.rounded(v_max, k, step, True)
            cells.append(Cell(lab, 0.0, 0.0, hi, True, level))
        else:
            lo, hi = intervals.rounded(v, k, step, nonneg)
            cells.append(Cell(lab, est, lo, hi, False, level))
    return cells


def _mean_cell(lab: tuple[str, ...], s: Measure, c: Measure, i: int, t: Template) -> Cell:
    """A ratio of two noisy integers, with an exact (Fieller-type) interval."""
    lower, upper = float(t.statistic.lower), float(t.statistic.upper)
    count = c.values[i]
    if count < max(t.output.min_count, 1):
        return Cell(lab, 0.0, lower, upper, True, LEVEL)
    total = s.values[i]
    est = min(max(total / count, lower), upper)
    if s.noise and c.noise:
        lo, hi = intervals.mean_interval(total, count, s.noise, c.noise, lower, upper)
    else:
        lo, hi = _legacy_mean(float(total), float(count), s, c, lower, upper)
    # Outwards to three decimals, so rounding never narrows the interval.
    lo = math.floor(round(lo * 1000, 6)) / 1000
    hi = math.ceil(round(hi * 1000, 6)) / 1000
    return Cell(lab, round(est, 3), max(lo, lower), min(hi, upper), False, LEVEL)


def _legacy_mean(
    total: float, count: float, s: Measure, c: Measure, lower: float, upper: float
) -> tuple[float, float]:
    """Each part's 97.5% interval, so both hold together with probability at least
    95%; the ratio is bounded by the corners."""
    s_lo, s_hi = total - s.ci975_half_width, total + s.ci975_half_width
    c_lo, c_hi = count - c.ci975_half_width, count + c.ci975_half_width
    if c_lo <= 0:
        return lower, upper
    corners = [s_lo / c_lo, s_lo / c_hi, s_hi / c_lo, s_hi / c_hi]
    return max(min(corners), lower), min(max(corners), upper)
