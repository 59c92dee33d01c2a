"""Post-processing and combining of noisy answers. No noise is drawn here.

Post-processing comes after the noise and costs no privacy: clamp at zero,
round, suppress small counts and attach 95% intervals. Combining adds nodes'
noisy vectors and their noise variances; a combined interval uses the normal
approximation to the sum of independent noises.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tessera.templates.model import StatisticKind, Template

Z95 = 1.959963984540054
Z975 = 2.241402727604947


@dataclass(frozen=True)
class Measure:
    """One noisy integer vector over the cells, with its per-cell noise figures."""

    name: str
    values: tuple[int, ...]
    variance: float
    ci95_half_width: float
    ci975_half_width: float


@dataclass(frozen=True)
class Cell:
    labels: tuple[str, ...]
    estimate: float
    ci95_low: float
    ci95_high: float
    suppressed: bool


def cell_labels(template: Template) -> list[tuple[str, ...]]:
    """Labels of every cell of the domain, in row-major order."""
    out: list[tuple[str, ...]] = [()]
    for dim in template.group_by:
        out = [(*prefix, label) for prefix in out for label in dim.labels]
    return out


def combine(answers: Sequence[Mapping[str, Measure]]) -> dict[str, Measure]:
    """Sum the nodes' noisy vectors; variances add, intervals from the normal approximation."""
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
            ci95, ci975 = parts[0].ci95_half_width, parts[0].ci975_half_width
        else:
            # The normal approximation under-covers a sum of a few heavy-tailed (Laplace)
            # noises; the root-sum-square of the nodes' exact half-widths does not, and
            # for Gaussian noise it equals the normal figure.
            ci95 = max(Z95 * math.sqrt(var), _rss(p.ci95_half_width for p in parts))
            ci975 = max(Z975 * math.sqrt(var), _rss(p.ci975_half_width for p in parts))
        out[name] = Measure(name, values, var, ci95, ci975)
    return out


def _rss(xs: Iterable[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in xs))


def _round(x: float, step: int) -> float:
    return float(step * round(x / step))


def release(template: Template, measures: Mapping[str, Measure]) -> list[Cell]:
    """The analyst-facing cells for a template, from (possibly combined) noisy measures."""
    labels = cell_labels(template)
    stat = template.statistic
    out_rules = template.output
    cells = []
    for i, lab in enumerate(labels):
        if stat.kind is StatisticKind.MEAN:
            cells.append(_mean_cell(lab, measures["sum"], measures["count"], i, template))
            continue
        m = measures["count"] if "count" in measures else measures["sum"]
        v = float(m.values[i])
        lo, hi = v - m.ci95_half_width, v + m.ci95_half_width
        if stat.kind is not StatisticKind.SUM or stat.lower >= 0:
            v, lo, hi = max(v, 0.0), max(lo, 0.0), max(hi, 0.0)
        step = out_rules.round_to
        est = _round(v, step)
        lo, hi = step * math.floor(lo / step), step * math.ceil(hi / step)
        is_count = stat.kind is not StatisticKind.SUM
        if is_count and est < out_rules.min_count:
            cells.append(Cell(lab, 0.0, 0.0, float(out_rules.min_count), True))
        else:
            cells.append(Cell(lab, est, float(lo), float(hi), False))
    return cells


def _mean_cell(lab: tuple[str, ...], s: Measure, c: Measure, i: int, t: Template) -> Cell:
    """A ratio with an honest interval: each part's 97.5% interval, so both hold
    together with probability at least 95%; the ratio is bounded by the corners."""
    lower, upper = float(t.statistic.lower), float(t.statistic.upper)
    count = float(c.values[i])
    if count < max(t.output.min_count, 1):
        return Cell(lab, 0.0, lower, upper, True)
    total = float(s.values[i])
    est = min(max(total / count, lower), upper)
    s_lo, s_hi = total - s.ci975_half_width, total + s.ci975_half_width
    c_lo, c_hi = count - c.ci975_half_width, count + c.ci975_half_width
    if c_lo <= 0:
        lo, hi = lower, upper
    else:
        corners = [s_lo / c_lo, s_lo / c_hi, s_hi / c_lo, s_hi / c_hi]
        lo, hi = max(min(corners), lower), min(max(corners), upper)
    return Cell(lab, round(est, 3), round(lo, 3), round(hi, 3), False)
