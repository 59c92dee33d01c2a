"""An empirical audit of the privacy claim, per mechanism and statistic.

Two neighbouring datasets are ingested for real: D holds one more child than D',
and that child has several records (more than the template's cap). The node's own
compiler gives the exact vectors on each; the node's own `privacy.add_noise` adds
the noise the node would add, many times. From the two output distributions a
lower bound on epsilon is estimated with Clopper-Pearson intervals (a threshold
event chosen on half the draws, measured on the other half), and it must not
exceed the claimed epsilon: the charged epsilon for discrete Laplace, and for
discrete Gaussian the epsilon that OpenDP's zCDP-to-(epsilon, delta) conversion
gives for the charged rho at delta = 1e-6.

Why the noise is drawn directly rather than by asking a node the same question
many times: a node deliberately answers an identical question (same template,
parameters and dataset version) with the answer it already released, at no cost,
so repeated asking yields one draw, never a distribution (checked below). The
end-to-end variant instead asks a real node many *distinct* questions (different
dates) whose exact answers are all the same by construction.

The 95% intervals' coverage is checked too: single-node cells from
`tessera.results.release`, and intervals combined over 2-5 nodes with
`tessera.results.combine`, both empirically and exactly (by convolving the noise
distributions). Figures go to tests/adversarial/results/dp_audit.json.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import opendp.prelude as dp
import pytest

from tessera import results, schemas, templates
from tessera.node import compiler, privacy
from tessera.node.catalog import DatasetCatalog
from tessera.node.ingest import ingest_dataset
from tessera.templates.model import (
    Output,
    Privacy,
    StatisticKind,
    Template,
    measure_sensitivities,
)
from tests.adversarial import fault_support as fs
from tests.support import federation as fedlib

dp.enable_features("contrib")

DELTA = 1e-6
T1 = "cla-by-age-and-placement"
T2 = "referrals-by-need-and-age"
T_MEAN = "absence-by-sen"
QUICK_DRAWS = 2000
FULL_DRAWS = int(os.environ.get("TESSERA_DP_AUDIT_DRAWS", "10000"))
NOW = datetime(2026, 4, 1, tzinfo=UTC)


# -- neighbouring datasets ----------------------------------------------------------------


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def _ssda903(folder: Path, with_x: bool) -> dict[str, list[Path]]:
    """Looked-after children on 31 March 2025. Child X has two overlapping
    episodes open that day: counted once (count_units, one cell per child)."""
    places = ["U1", "U3", "K2", "H5", "P1", "Z1"]
    header, episodes = [], []
    for i in range(40):
        child = f"C{i:03d}"
        header.append(
            f"{child},{1 + i % 2},{date(2008 + i % 17, 1 + i % 12, 1).isoformat()},WBRI,,,"
        )
        place = places[i % len(places)]
        episodes.append(f"{child},2024-0{1 + i % 9}-01,S,C2,N1,{place},PR1,,,,,,")
    if with_x:
        header.append("X,1,2012-06-01,WBRI,,,")
        episodes.append("X,2023-05-01,S,C2,N1,U1,PR1,,,,,,")
        episodes.append("X,2024-02-01,P,C2,N1,K2,PR2,,,,,,")
    return _ssda903_files(folder, header, episodes)


EPISODES_HEADER = (
    "CHILD,DECOM,RNE,LS,CIN,PLACE,PLACE_PROVIDER,DEC,REC,REASON_PLACE_CHANGE,HOME_POST,PL_POST,URN"
)


def _ssda903_files(folder: Path, header: list[str], episodes: list[str]) -> dict[str, list[Path]]:
    return {
        "header": [_csv(folder / "header.csv", "CHILD,SEX,DOB,ETHNIC,UPN,MOTHER,MC_DOB", header)],
        "episodes": [_csv(folder / "episodes.csv", EPISODES_HEADER, episodes)],
    }


def _cin(folder: Path, with_x: bool) -> dict[str, list[Path]]:
    """Referrals in 2024/25. Child X has five referrals in one cell: three count."""
    needs = ["N1", "N2", "N4", "N5", "N8"]
    children, referrals = [], []
    for i in range(40):
        child = f"K{i:03d}"
        children.append(f"{child},{date(2009 + i % 16, 1 + i % 12, 15).isoformat()},{1 + i % 2},,")
        for j in range(1 + i % 4):
            day = date(2024, 4 + j, 1 + i % 28).isoformat()
            referrals.append(f"{child},{day},1A,{needs[(i + j) % len(needs)]},false")
    if with_x:
        children.append("X,2013-01-01,1,,")
        for j in range(5):
            referrals.append(f"X,{date(2024, 5 + j, 10).isoformat()},2A,N1,false")
    empty = {
        "cin_episodes": [
            _csv(folder / "cin_episodes.csv", "child_id,start_date,end_date,primary_need", [])
        ],
        "cp_plans": [
            _csv(folder / "cp_plans.csv", "child_id,start_date,end_date,initial_category", [])
        ],
    }
    return {
        "children": [_csv(folder / "children.csv", "child_id,dob,sex,upn,nhs_number", children)],
        "referrals": [
            _csv(
                folder / "referrals.csv",
                "child_id,referral_date,referral_source,primary_need,nfa",
                referrals,
            )
        ],
        **empty,
    }


def _education(folder: Path, with_x: bool) -> dict[str, list[Path]]:
    """Attendance in 2024/25. Pupil X missed 200 sessions in each of four records:
    clamped to 150, at most three used, so X moves one cell's sum by 450."""
    sens = ["NONE", "SEN_SUPPORT", "EHC_PLAN"]
    pupils, attendance = [], []
    for i in range(40):
        upn = f"A{i:012d}"
        pupils.append(f"{upn},,{date(2010 + i % 8, 1 + i % 12, 1).isoformat()},false,{sens[i % 3]}")
        for term in ("AUTUMN", "SPRING", "SUMMER"):
            attendance.append(f"{upn},2024/25,{term},130,{(7 * i + len(term)) % 60}")
    if with_x:
        pupils.append("X00000000000X,,2012-03-01,true,EHC_PLAN")
        for term in ("AUTUMN", "SPRING", "SUMMER", "SUMMER"):
            attendance.append(f"X00000000000X,2024/25,{term},300,200")
    return {
        "pupils": [_csv(folder / "pupils.csv", "upn,nhs_number,dob,fsm,sen", pupils)],
        "attendance": [
            _csv(
                folder / "attendance.csv",
                "upn,academic_year,term,sessions_possible,sessions_missed",
                attendance,
            )
        ],
    }


WRITERS: dict[str, Callable[[Path, bool], dict[str, list[Path]]]] = {
    "ssda903": _ssda903,
    "cin": _cin,
    "education": _education,
}


@dataclass
class Neighbours:
    """Catalogs of D (with child X) and D' (without), per dataset."""

    d: dict[str, DatasetCatalog]
    dprime: dict[str, DatasetCatalog]

    def exact(self, which: str, t: Template, params: dict[str, Any]) -> dict[str, Any]:
        catalog = (self.d if which == "D" else self.dprime)[t.dataset]
        version = catalog.latest(t.dataset)
        assert version is not None
        query = compiler.compile_query(t, params, exclude_opted_out=True, order_key=bytes(32))
        cursor = catalog.connect(version).cursor()
        try:
            return compiler.run(cursor, query)
        finally:
            cursor.close()


def build_neighbours(root: Path) -> Neighbours:
    out = Neighbours({}, {})
    for name, write in WRITERS.items():
        ds = schemas.dataset(name)
        assert ds is not None
        for with_x in (True, False):
            tag = "d" if with_x else "dprime"
            files = write(root / "sources" / tag / name, with_x)
            report = ingest_dataset(ds, files, root / tag, NOW)
            assert not report.rejections, report.rejections[:3]
            (out.d if with_x else out.dprime)[name] = DatasetCatalog(root / tag)
    return out


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = build_neighbours(tmp_path_factory.mktemp("neighbours"))
    yield out
    for c in (*out.d.values(), *out.dprime.values()):
        c.close()


# -- the cases ----------------------------------------------------------------------------


def _template(name: str) -> Template:
    return templates.load_toml((fedlib.EXAMPLES / f"{name}.toml").read_text())


def _sum_template() -> Template:
    t = _template(T_MEAN)
    return dataclasses.replace(
        t,
        id="absence-sum-by-sen",
        statistic=dataclasses.replace(t.statistic, kind=StatisticKind.SUM),
    )


STATISTICS: dict[str, tuple[Callable[[], Template], dict[str, Any]]] = {
    "count_units": (lambda: _template(T1), {"on_date": date(2025, 3, 31)}),
    "count_records": (
        lambda: _template(T2),
        {"period_start": date(2024, 4, 1), "period_end": date(2025, 3, 31)},
    ),
    "sum": (_sum_template, {"academic_year": "2024/25"}),
}


@dataclass(frozen=True)
class Case:
    statistic: str
    mechanism: str  # "discrete_laplace" (epsilon) or "discrete_gaussian" (rho)
    budget: float

    @property
    def name(self) -> str:
        kind = "eps" if self.mechanism == "discrete_laplace" else "rho"
        return f"{self.statistic}/{self.mechanism}/{kind}={self.budget:g}"

    def template(self) -> Template:
        t = STATISTICS[self.statistic][0]()
        p = (
            Privacy(epsilon=self.budget)
            if self.mechanism == "discrete_laplace"
            else Privacy(rho=self.budget)
        )
        return dataclasses.replace(t, privacy=p)

    @property
    def params(self) -> dict[str, Any]:
        return STATISTICS[self.statistic][1]


def cases(levels: list[tuple[float, float]]) -> list[Case]:
    return [
        Case(stat, mech, eps if mech == "discrete_laplace" else rho)
        for eps, rho in levels
        for stat in STATISTICS
        for mech in ("discrete_laplace", "discrete_gaussian")
    ]


# With n draws a Clopper-Pearson bound cannot exceed about ln(n / 4): rho is chosen
# so that its (epsilon, delta) claim (2.42 for 0.125, 1.47 for 0.05) is within reach.
QUICK_CASES = cases([(1.0, 0.125)])
FULL_CASES = cases([(1.0, 0.125), (0.5, 0.05)])


def claimed_epsilon(cal: privacy.Calibration) -> float:
    """The epsilon the node claims for one release: the charged epsilon, or for rho
    the epsilon of (epsilon, delta)-DP at DELTA, from OpenDP's own conversion."""
    if cal.kind == "epsilon":
        return cal.loss
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="f64")
    gaussian = dp.m.make_gaussian(*space, scale=cal.scale)
    approx = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(gaussian), DELTA)
    eps, delta = approx.map(float(cal.sensitivity.l2))
    assert delta <= DELTA
    return float(eps)


@dataclass
class Draws:
    case: Case
    template: Template
    cal: privacy.Calibration  # what is applied
    charged: privacy.Calibration  # what the node charges for (differs only when broken)
    exact_d: npt.NDArray[np.int64]
    exact_dprime: npt.NDArray[np.int64]
    noisy_d: npt.NDArray[np.int64]  # draws x cells
    noisy_dprime: npt.NDArray[np.int64]
    variance: float
    ci95: float
    ci975: float

    @property
    def diff(self) -> npt.NDArray[np.int64]:
        return self.exact_d - self.exact_dprime


def draw(neighbours: Neighbours, case: Case, n: int, scale_factor: float = 1.0) -> Draws:
    t = case.template()
    sens = measure_sensitivities(t.statistic)
    (charged,) = privacy.calibrate(t.privacy, sens)  # count_units, count_records, sum: one measure
    cal = dataclasses.replace(charged, scale=charged.scale * scale_factor)
    exact_d = neighbours.exact("D", t, case.params)[cal.name]
    exact_dprime = neighbours.exact("D'", t, case.params)[cal.name]
    rows_d, rows_q = [], []
    first = privacy.add_noise(cal, exact_d)
    for _ in range(n):
        rows_d.append(privacy.add_noise(cal, exact_d).values)
        rows_q.append(privacy.add_noise(cal, exact_dprime).values)
    return Draws(
        case,
        t,
        cal,
        charged,
        exact_d,
        exact_dprime,
        np.vstack(rows_d),
        np.vstack(rows_q),
        first.variance,
        first.ci95_half_width,
        first.ci975_half_width,
    )


def audit_case(d: Draws, family_alpha: float) -> dict[str, Any]:
    diff = d.diff
    # One child moves the exact vector by exactly the declared sensitivity: the
    # neighbours realise the worst case, so the audit can be tight.
    assert np.abs(diff).sum() == pytest.approx(d.cal.sensitivity.l1)
    assert math.sqrt(float((diff**2).sum())) <= d.cal.sensitivity.l2 + 1e-9
    delta = 0.0 if d.cal.kind == "epsilon" else DELTA
    bound = fs.audit_epsilon(
        d.noisy_d @ diff, d.noisy_dprime @ diff, delta=delta, family_alpha=family_alpha
    )
    claimed = claimed_epsilon(d.charged)
    return {
        "case": d.case.name,
        "statistic": d.case.statistic,
        "mechanism": d.case.mechanism,
        "charged": {d.charged.kind: d.charged.loss},
        "claimed_epsilon": claimed,
        "delta": delta,
        "sensitivity": {"l1": d.cal.sensitivity.l1, "l2": d.cal.sensitivity.l2},
        "noise_scale": d.cal.scale,
        "draws_per_dataset": int(d.noisy_d.shape[0]),
        "epsilon_lower_bound_95": bound.eps_lb,
        "epsilon_lower_bound_family": bound.eps_lb_family,
        "family_alpha": family_alpha,
        "event": {
            "statistic": "<output, D - D'>",
            "tail": bound.event.tail,
            "threshold": bound.event.threshold,
            "numerator": bound.event.first,
            "counts": list(bound.counts),
        },
    }


# -- coverage -----------------------------------------------------------------------------


def _measure(d: Draws, values: npt.NDArray[np.int64]) -> results.Measure:
    # As the node stores it: with its noise distribution (tests/adversarial/test_coverage.py
    # measures the intervals in depth).
    part = results.NoisePart(results.mechanism(d.cal.kind), d.cal.scale)
    return results.measure_from_noise(d.cal.name, [int(v) for v in values], d.variance, [part])


def empirical_coverage(d: Draws, k: int) -> tuple[int, int]:
    """Coverage of the released 95% intervals (clamped and rounded as released, no
    suppression) against the exact value, for answers combined over k nodes."""
    t = dataclasses.replace(d.template, output=Output(min_count=0, round_to=1))
    hit = total = 0
    rows = d.noisy_d
    for g in range(rows.shape[0] // k):
        parts = [{d.cal.name: _measure(d, rows[g * k + j])} for j in range(k)]
        measures = parts[0] if k == 1 else results.combine(parts)
        cells = results.release(t, measures)
        h, n = fs.coverage(
            [c.ci95_low for c in cells], [c.ci95_high for c in cells], list(k * d.exact_d)
        )
        hit, total = hit + h, total + n
    return hit, total


def _noise_pmf(kind: str, scale: float, k: int) -> npt.NDArray[np.float64]:
    """The pmf of the sum of k independent draws of the node's noise, on
    -width..width (the k-fold convolution, by FFT)."""
    reach = 40 * scale if kind == "epsilon" else 12 * scale  # tails beyond: < 1e-17
    one = math.ceil(reach) + 2
    e = np.arange(-one, one + 1, dtype=np.float64)
    p = np.exp(-np.abs(e) / scale) if kind == "epsilon" else np.exp(-(e**2) / (2 * scale * scale))
    p /= p.sum()
    size = k * (2 * one) + 1
    spectrum = np.fft.rfft(p, size) ** k
    return np.clip(np.fft.irfft(spectrum, size), 0.0, None)


def exact_coverage(d: Draws, k: int) -> float:
    """The exact coverage, for a cell away from zero, of the released interval of k
    nodes' combined answers: the noise is the k-fold convolution of the node's
    noise, and the released interval [floor(v - h), ceil(v + h)] holds the exact
    value x iff the integer noise E satisfies |E| < h + 1."""
    pmf = _noise_pmf(d.cal.kind, d.cal.scale, k)
    if k == 1:
        h = d.ci95
    else:
        m = _measure(d, d.exact_d)
        h = results.combine([{d.cal.name: m}] * k)[d.cal.name].ci95_half_width
    mid = len(pmf) // 2
    e = np.arange(len(pmf)) - mid
    return float(pmf[np.abs(e) < h + 1].sum())


def coverage_figures(d: Draws) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in range(1, 6):
        hit, total = empirical_coverage(d, k)
        out[f"nodes={k}"] = {
            "empirical": hit / total,
            "cells": total,
            "exact": exact_coverage(d, k),
        }
    return out


def check_coverage(figures: dict[str, Any]) -> list[str]:
    problems = []
    for case, per_k in figures.items():
        for k, f in per_k.items():
            if f["exact"] < 0.95:
                problems.append(f"{case} {k}: exact coverage {f['exact']:.4f} < 0.95")
            # Sampling error: allow three standard errors below 0.95.
            slack = 3 * math.sqrt(0.95 * 0.05 / f["cells"])
            if f["empirical"] < 0.95 - slack:
                problems.append(f"{case} {k}: empirical coverage {f['empirical']:.4f}")
    return problems


# -- the audit, end to end through a real node --------------------------------------------

E2E_FIRST = date(2015, 6, 5)
E2E_LAST = date(2021, 5, 31)


def _e2e_files(folder: Path, with_x: bool) -> dict[str, list[Path]]:
    """Looked-after children whose cells cannot change between 5 June 2015 and 31 May
    2021: three children aged 10-15 throughout with episodes open throughout, and
    others whose episodes start in 2022. Child X (D only) is one more such child."""
    header = [
        "C1,1,2005-06-01,WBRI,,,",
        "C2,2,2005-06-02,WBRI,,,",
        "C3,1,2005-06-03,WBRI,,,",
    ]
    episodes = [
        "C1,2015-01-01,S,C2,N1,U1,PR1,,,,,,",
        "C2,2015-01-01,S,C2,N1,K2,PR1,,,,,,",
        "C3,2015-01-01,S,C2,N1,H5,PR1,,,,,,",
    ]
    for i in range(12):
        header.append(f"L{i},1,{date(2012 + i % 10, 3, 1).isoformat()},WBRI,,,")
        episodes.append(f"L{i},2022-0{1 + i % 9}-01,S,C2,N1,U3,PR1,,,,,,")
    if with_x:
        header.append("X,1,2005-06-01,WBRI,,,")
        episodes.append("X,2015-01-01,S,C2,N1,K2,PR2,,,,,,")
    return _ssda903_files(folder, header, episodes)


def end_to_end(tmp: Path, n: int, family_alpha: float) -> dict[str, Any]:
    from tessera.node.main import start

    ssda903 = schemas.dataset("ssda903")
    assert ssda903 is not None
    fed = fedlib.make(tmp / "fed", node_names=("NodeD", "NodeDprime"))
    t = dataclasses.replace(fed.template(T1), privacy=Privacy(epsilon=1.0))
    signed = fedlib.sign_template(t, fed.approvers[:2])
    (cal,) = privacy.calibrate(t.privacy, measure_sensitivities(t.statistic))
    days = [E2E_FIRST + timedelta(days=i) for i in range((E2E_LAST - E2E_FIRST).days + 1)]
    assert len(days) >= n
    days = days[:n]
    nodes, exact = {}, {}
    try:
        for name, with_x in (("NodeD", True), ("NodeDprime", False)):
            cfg = fs.big_budget_config(fed, name)
            ingest_dataset(ssda903, _e2e_files(tmp / "src" / name, with_x), cfg.data_dir, NOW)
            nodes[name] = start(cfg)
            # Every question has the same exact answer (checked at both ends and mid-way).
            catalog = nodes[name].service.catalog
            version = catalog.latest("ssda903")
            vectors = set()
            for day in (days[0], days[len(days) // 2], days[-1]):
                cursor = catalog.connect(version).cursor()
                q = compiler.compile_query(
                    t, {"on_date": day}, exclude_opted_out=True, order_key=bytes(32)
                )
                vectors.add(tuple(compiler.run(cursor, q)["count"]))
                cursor.close()
            assert len(vectors) == 1
            exact[name] = np.array(vectors.pop())

        # The same question twice gives one draw, not two: the cached answer, free.
        stub = fedlib.node_stub(fed, nodes["NodeD"].port)
        once = stub.Execute(
            fedlib.execute_request(fed, signed, {"on_date": "2015-06-01"}, audience=["NodeD"])
        )
        twice = stub.Execute(
            fedlib.execute_request(fed, signed, {"on_date": "2015-06-01"}, audience=["NodeD"])
        )
        assert twice.answer.from_cache and twice.answer.charged.epsilon == 0.0
        assert list(twice.answer.measures[0].values) == list(once.answer.measures[0].values)

        def ask_all(name: str) -> npt.NDArray[np.int64]:
            stub = fedlib.node_stub(fed, nodes[name].port)
            lock = threading.Lock()
            rows: dict[date, list[int]] = {}

            def ask(day: date) -> None:
                req = fedlib.execute_request(
                    fed, signed, {"on_date": day.isoformat()}, audience=[name]
                )
                reply = stub.Execute(req, timeout=60)
                assert not reply.answer.from_cache
                with lock:
                    rows[day] = list(reply.answer.measures[0].values)

            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(ask, days))
            return np.array([rows[day] for day in days])

        with ThreadPoolExecutor(max_workers=2) as pool:
            got = dict(zip(nodes, pool.map(ask_all, nodes), strict=True))
    finally:
        for node in nodes.values():
            node.stop(0)
    diff = exact["NodeD"] - exact["NodeDprime"]
    (cell,) = np.nonzero(diff)[0]
    # Fixed in advance, no selection: {Y >= x' + 2}. For discrete Laplace of scale
    # 1/eps the ratio of its probabilities on D and D' is exactly e^eps.
    event = fs.Event("ge", float(exact["NodeDprime"][cell] + 2), "D")
    bound = fs.audit_epsilon(
        got["NodeD"][:, cell], got["NodeDprime"][:, cell], event=event, family_alpha=family_alpha
    )
    return {
        "case": "count_units/discrete_laplace/eps=1 end-to-end through two real nodes",
        "claimed_epsilon": cal.loss,
        "questions_per_node": n,
        "epsilon_lower_bound_95": bound.eps_lb,
        "epsilon_lower_bound_family": bound.eps_lb_family,
        "event": {
            "tail": "ge",
            "threshold": event.threshold,
            "numerator": "D",
            "counts": list(bound.counts),
        },
    }


# -- the tests ----------------------------------------------------------------------------


def run_audit(
    neighbours: Neighbours, tmp: Path, the_cases: list[Case], n: int, e2e_n: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    family_alpha = 0.05 / (len(the_cases) + 1)
    bounds, cover = [], {}
    for case in the_cases:
        d = draw(neighbours, case, n)
        bounds.append(audit_case(d, family_alpha))
        cover[case.name] = coverage_figures(d)
    bounds.append(end_to_end(tmp, e2e_n, family_alpha))
    return bounds, cover


def _check_bounds(bounds: list[dict[str, Any]]) -> list[str]:
    # The assertion uses the bound that holds with 95% confidence across all cases
    # at once (Bonferroni); the per-case 95% bound is recorded beside it.
    return [
        f"{b['case']}: lower bound {b['epsilon_lower_bound_family']:.3f} > "
        f"claimed {b['claimed_epsilon']:.3f}"
        for b in bounds
        if b["epsilon_lower_bound_family"] > b["claimed_epsilon"] * (1 + 1e-9)
    ]


def test_dp_audit_quick(neighbours: Neighbours, tmp_path: Path) -> None:
    bounds, cover = run_audit(neighbours, tmp_path, QUICK_CASES, QUICK_DRAWS, e2e_n=200)
    fs.record("dp_audit", "quick", {"lower_bounds": bounds, "coverage": cover})
    assert _check_bounds(bounds) == []
    assert check_coverage(cover) == []


@pytest.mark.soak
def test_dp_audit_full(neighbours: Neighbours, tmp_path: Path) -> None:
    bounds, cover = run_audit(neighbours, tmp_path, FULL_CASES, FULL_DRAWS, e2e_n=900)
    fs.record("dp_audit", "full", {"lower_bounds": bounds, "coverage": cover})
    assert _check_bounds(bounds) == []
    assert check_coverage(cover) == []


@pytest.mark.parametrize(
    "mechanism,factor", [("discrete_laplace", 1 / 3), ("discrete_gaussian", 1 / 6)]
)
def test_the_audit_catches_a_mechanism_with_too_little_noise(
    neighbours: Neighbours, mechanism: str, factor: float
) -> None:
    """The audit has teeth: with the noise scale cut below what the charge pays
    for, the lower bound exceeds the claimed epsilon."""
    case = Case("count_records", mechanism, 1.0 if mechanism == "discrete_laplace" else 0.05)
    # 2,400 draws: at 600 the Gaussian case missed now and then (a test of power)
    d = draw(neighbours, case, 2400, scale_factor=factor)
    b = audit_case(d, family_alpha=0.05 / (len(QUICK_CASES) + 1))
    fs.record(
        "dp_audit",
        "quick",
        {f"broken_{mechanism}": {**b, "noise_scale_factor": factor}},
    )
    assert b["epsilon_lower_bound_family"] > b["claimed_epsilon"]


# -- Clopper-Pearson itself ---------------------------------------------------------------


def test_clopper_pearson_known_values() -> None:
    lo, hi = fs.clopper_pearson(5, 10)
    assert (lo, hi) == (pytest.approx(0.187086, abs=1e-6), pytest.approx(0.812914, abs=1e-6))
    lo, hi = fs.clopper_pearson(10, 100)
    assert (lo, hi) == (pytest.approx(0.049005, abs=1e-6), pytest.approx(0.176223, abs=1e-6))
    n = 250
    assert fs.clopper_pearson(0, n) == (0.0, pytest.approx(1 - 0.025 ** (1 / n), abs=1e-12))
    assert fs.clopper_pearson(n, n) == (pytest.approx(0.025 ** (1 / n), abs=1e-12), 1.0)
    # Symmetry: x of n successes mirrors n - x.
    lo, hi = fs.clopper_pearson(37, 120)
    lo2, hi2 = fs.clopper_pearson(83, 120)
    assert (lo, hi) == (pytest.approx(1 - hi2, abs=1e-12), pytest.approx(1 - lo2, abs=1e-12))


@pytest.mark.parametrize("n,p", [(30, 0.1), (50, 0.5), (200, 0.03), (300, 0.7)])
def test_clopper_pearson_covers_at_least_95_percent(n: int, p: float) -> None:
    """Exact coverage over every outcome x ~ Bin(n, p) is at least 95%."""
    lf = [math.lgamma(i + 1) for i in range(n + 1)]
    cover = 0.0
    for x in range(n + 1):
        lo, hi = fs.clopper_pearson(x, n)
        if lo <= p <= hi:
            cover += math.exp(
                lf[n] - lf[x] - lf[n - x] + x * math.log(p) + (n - x) * math.log1p(-p)
            )
    assert cover >= 0.95


def test_epsilon_bound_of_a_known_ratio() -> None:
    # 600 of 1000 against 100 of 1000: the point ratio is 6 (ln 6 = 1.79).
    eps = fs.epsilon_from(600, 1000, 100, 1000, alpha=0.05)
    assert 1.4 < eps < math.log(6)
    assert fs.epsilon_from(100, 1000, 600, 1000, alpha=0.05) == 0.0
