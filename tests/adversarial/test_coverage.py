"""Do the 95% intervals mean what they say? Simulated through the node's own parts.

Every draw is real node noise: the template's measures are calibrated by
`tessera.node.privacy.calibrate` and noised by `privacy.add_noise` (OpenDP), stored
as the node stores them (`results.measure_from_stored` of the payload entry the node
writes), combined by `results.combine` when several nodes answer, and released by
`results.release`. Each cell of a wide domain is one independent draw at a known
truth, so one call draws many.

For each case the simulated coverage must be at least the reported level (less four
standard errors), and, where the level is exact (the worst case over the truth's
position), at most 97% or, when the noise's discreteness forces more, within half a
point of the reported level. Suppressed cells and means are guaranteed levels
(lower bounds): checked from below, and their figures recorded.

The default run uses a few thousand draws per case; `-m soak` uses 10^5 per case.
Figures go to tests/adversarial/results/coverage.json.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera import results, templates
from tessera.node import privacy
from tessera.templates.model import (
    CategoriesDim,
    Category,
    Output,
    StatisticKind,
    Template,
    measure_sensitivities,
)
from tests.adversarial import fault_support as fs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "templates"
QUICK_DRAWS = 3000
QUICK_MEAN_DRAWS = 1000  # a mean's interval costs a millisecond or two per cell
SOAK_DRAWS = 100_000
CHUNK = 20_000


def _template(name: str, cells: int, **output: int) -> Template:
    t = templates.load_toml((EXAMPLES / f"{name}.toml").read_text())
    dim = CategoriesDim("cell", "x", tuple(Category(f"c{i}", (str(i),)) for i in range(cells)))
    out = dataclasses.replace(t.output, **output) if output else t.output
    return dataclasses.replace(t, group_by=(dim,), output=out)


@dataclass(frozen=True)
class Case:
    name: str
    template: str
    nodes: int
    # Per node: the exact count (and, for a mean, the exact sum) in every cell.
    count: int
    total: int = 0
    min_count: int | None = None
    round_to: int | None = None
    # True when the reported level is exact at this truth (so it is checked from above).
    exact: bool = True


CASES = [
    Case("epsilon/one node", "cla-by-age-and-placement", 1, 50),
    Case("rho/one node", "referrals-by-need-and-age", 1, 60),
    Case("epsilon/3 nodes combined", "cla-by-age-and-placement", 3, 20),
    Case("rho/3 nodes combined", "referrals-by-need-and-age", 3, 20),
    Case("epsilon/round_to 5, truth 51 (worst)", "cla-by-age-and-placement", 1, 51, round_to=5),
    Case(
        "epsilon/round_to 5, truth 50",
        "cla-by-age-and-placement",
        1,
        50,
        round_to=5,
        exact=False,
    ),
    Case(
        "epsilon/round_to 5, truth 53",
        "cla-by-age-and-placement",
        1,
        53,
        round_to=5,
        exact=False,
    ),
    Case("rho/round_to 10, truth 61 (worst)", "referrals-by-need-and-age", 1, 61, round_to=10),
    Case("epsilon/suppressed, truth 6", "cla-by-age-and-placement", 1, 6, exact=False),
    Case("epsilon/suppressed, truth 2", "cla-by-age-and-placement", 1, 2, exact=False),
    Case("epsilon/suppressed, truth 10", "cla-by-age-and-placement", 1, 10, exact=False),
    Case(
        "rho/suppressed, 2 nodes, truth 4+4",
        "referrals-by-need-and-age",
        2,
        4,
        min_count=10,
        exact=False,
    ),
    Case("epsilon/mean, one node", "absence-by-sen", 1, 200, total=1400, exact=False),
    Case("epsilon/mean, 3 nodes combined", "absence-by-sen", 3, 40, total=400, exact=False),
]


def _node_measures(t: Template, case: Case, n: int) -> dict[str, results.Measure]:
    """One node's answer over n cells, as the node computes and stores it."""
    cals = privacy.calibrate(t.privacy, measure_sensitivities(t.statistic))
    out = {}
    for cal in cals:
        truth = case.count if cal.name == "count" else case.total
        noisy = privacy.add_noise(cal, np.full(n, truth, dtype=np.int64))
        stored = {
            "name": noisy.name,
            "values": [int(x) for x in noisy.values],
            "variance": noisy.variance,
            "ci95": noisy.ci95_half_width,
            "ci975": noisy.ci975_half_width,
            "mechanism": results.mechanism(cal.kind),
            "scale": noisy.scale,
        }
        out[cal.name] = results.measure_from_stored(stored, cal.kind)
    return out


def simulate(case: Case, draws: int) -> dict[str, Any]:
    hit = suppressed = 0
    levels: set[float] = set()
    done = 0
    while done < draws:
        n = min(CHUNK, draws - done)
        output = {
            k: v
            for k, v in (("min_count", case.min_count), ("round_to", case.round_to))
            if v is not None
        }
        t = _template(case.template, n, **output)
        answers = [_node_measures(t, case, n) for _ in range(case.nodes)]
        measures = answers[0] if case.nodes == 1 else results.combine(answers)
        cells = results.release(t, measures)
        if t.statistic.kind is StatisticKind.MEAN:
            truth: float = case.total / case.count
        else:
            truth = case.nodes * case.count
        hit += sum(1 for c in cells if c.ci95_low <= truth <= c.ci95_high)
        suppressed += sum(1 for c in cells if c.suppressed)
        levels |= {c.coverage for c in cells}
        done += n
    (level,) = levels
    return {
        "draws": draws,
        "simulated": hit / draws,
        "reported": level,
        "suppressed_share": suppressed / draws,
        "level_is_exact": case.exact,
    }


def problems(name: str, f: dict[str, Any]) -> list[str]:
    slack = 4 * math.sqrt(0.95 * 0.05 / f["draws"])
    sim, rep = f["simulated"], f["reported"]
    out = []
    if rep < 0.95:
        out.append(f"{name}: reported level {rep:.4f} below 95%")
    if sim < rep - slack:
        out.append(f"{name}: covers {sim:.4f}, reported {rep:.4f}")
    if f["level_is_exact"]:
        if rep <= 0.97 and sim > 0.97 + slack:
            out.append(f"{name}: covers {sim:.4f}, above 97%")
        if rep > 0.97 and abs(sim - rep) > max(0.005, slack):
            out.append(f"{name}: covers {sim:.4f}, reported {rep:.4f} (off by > 0.5 points)")
    return out


def run(draws: int, mean_draws: int, variant: str) -> dict[str, Any]:
    figures = {c.name: simulate(c, mean_draws if c.total else draws) for c in CASES}
    fs.record("coverage", variant, figures)
    found = [p for name, f in figures.items() for p in problems(name, f)]
    assert not found, found
    return figures


def test_coverage_quick() -> None:
    figures = run(QUICK_DRAWS, QUICK_MEAN_DRAWS, "quick")
    # The case: a suppressed cell at truth 6 used to claim [0, 5].
    assert figures["epsilon/suppressed, truth 6"]["simulated"] >= 0.95 - 0.02


@pytest.mark.soak
def test_coverage_soak() -> None:
    run(SOAK_DRAWS, SOAK_DRAWS, "soak")


def test_the_check_catches_an_interval_that_under_covers() -> None:
    """The suite would fail on the old suppressed interval [0, min_count] at truth 6."""
    t = _template("cla-by-age-and-placement", QUICK_DRAWS)
    m = _node_measures(t, Case("x", t.id, 1, 6), QUICK_DRAWS)["count"]
    cells = results.release(t, {"count": m})
    old = [(0.0, 5.0) if c.suppressed else (c.ci95_low, c.ci95_high) for c in cells]
    sim = sum(1 for lo, hi in old if lo <= 6 <= hi) / len(old)
    f = {"draws": len(old), "simulated": sim, "reported": 0.96, "level_is_exact": False}
    assert problems("old rule", f)


def test_the_check_catches_an_interval_that_over_covers() -> None:
    f = {"draws": SOAK_DRAWS, "simulated": 0.99, "reported": 0.95, "level_is_exact": True}
    assert problems("too wide", f)
    f = {"draws": SOAK_DRAWS, "simulated": 0.99, "reported": 0.98, "level_is_exact": True}
    assert problems("wrong level", f)


def test_release_uses_the_template_output_rules() -> None:
    t = _template("cla-by-age-and-placement", 3, round_to=5)
    assert t.output == Output(min_count=5, round_to=5)
