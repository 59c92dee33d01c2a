"""Scenario 2: the same histogram and mean, over the same records, through
SmartNoise SQL (in a virtualenv of its own, timed inside its process) and through
OpenDP applied straight to in-memory numpy arrays (the floor for the noise work)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench import stats, venv
from bench.cluster import Questions
from bench.data import FIRST_DAY, Arrays
from tessera.node import privacy
from tessera.templates.model import (
    BandsDim,
    CategoriesDim,
    Dimension,
    StatisticKind,
    Template,
    measure_sensitivities,
)

SMARTNOISE_SPEC = "smartnoise-sql==1.0.10"
BENCH_DIR = Path(__file__).resolve().parent
VENV = BENCH_DIR / ".venv-smartnoise"
RUNNER = BENCH_DIR / "smartnoise_runner.py"


# -- SmartNoise SQL --------------------------------------------------------------------


def ensure_venv(log: Callable[[str], None]) -> tuple[Path, float]:
    """SmartNoise's own virtualenv (bench/venv.py)."""
    return venv.ensure(VENV, SMARTNOISE_SPEC, log)


def _dim_sql(d: Dimension) -> str:
    if isinstance(d, BandsDim):
        assert d.column is not None
        whens = " ".join(
            f"WHEN {d.column} BETWEEN {b.min} AND {b.max} THEN {i}" for i, b in enumerate(d.bands)
        )
        return f"CASE {whens} END"
    assert isinstance(d, CategoriesDim)
    # SmartNoise's parser does not take IN lists inside CASE: spell them out.
    whens = " ".join(
        f"WHEN {' OR '.join(f'{d.column} = {c!r}' for c in cat.codes)} THEN {i}"
        for i, cat in enumerate(d.categories)
    )
    return f"CASE {whens} ELSE {len(d.categories)} END"


def smartnoise_sql(t: Template, params: dict[str, str]) -> str:
    """The template's question in SmartNoise's SQL: same cells, filter and opt-out rule."""
    dims = [_dim_sql(d) for d in t.group_by]
    select = ", ".join(f"{e} AS d{i}" for i, e in enumerate(dims))
    if t.statistic.kind is StatisticKind.MEAN:
        agg = f"AVG({t.statistic.column}) AS mean_value"
    else:
        agg = "COUNT(*) AS n"
    where = (
        f"arrival_date BETWEEN '{params['period_start']}' AND '{params['period_end']}' "
        "AND opted_out = 0"
    )
    return f"SELECT {select}, {agg} FROM health.ed WHERE {where} GROUP BY {', '.join(dims)}"


def _metadata(hist: Template, mean: Template) -> dict[str, Any]:
    cap = hist.statistic.max_records_per_unit
    assert mean.statistic.max_records_per_unit == cap
    return {
        "bench": {
            "health": {
                "ed": {
                    "row_privacy": False,
                    "max_ids": cap,
                    "censor_dims": False,
                    "nhs_number": {"type": "string", "private_id": True},
                    "arrival_date": {"type": "string"},
                    "age_years": {
                        "type": "int",
                        "lower": mean.statistic.lower,
                        "upper": mean.statistic.upper,
                    },
                    "attendance_category": {"type": "string"},
                    "opted_out": {"type": "int", "lower": 0, "upper": 1},
                }
            }
        }
    }


def _per_aggregate_epsilon(t: Template) -> float:
    assert t.privacy.epsilon is not None
    return t.privacy.epsilon / len(measure_sensitivities(t.statistic))


def run_smartnoise(
    python: Path,
    csv: Path,
    queries: dict[str, Template],
    questions: Questions,
    warmup: int,
    reps: int,
    work: Path,
) -> dict[str, Any]:
    spec = {
        "csv": str(csv),
        "dtypes": {"nhs_number": "str", "arrival_date": "str", "attendance_category": "str"},
        "metadata": _metadata(queries["histogram"], queries["mean"]),
        "warmup": warmup,
        "queries": {
            name: {
                "epsilon": _per_aggregate_epsilon(t),
                "sql": [smartnoise_sql(t, questions.next()) for _ in range(warmup + reps)],
            }
            for name, t in queries.items()
        },
    }
    spec_path = work / "smartnoise-spec.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(
        [str(python), str(RUNNER), str(spec_path)], capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"the SmartNoise runner failed ({done.returncode}): {tail}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    for name, q in out.pop("queries").items():
        q.update(stats.summary(q.pop("samples_ms"), q["warmup"]))
        out[name] = q
    out["example_sql"] = spec["queries"]["histogram"]["sql"][0]  # type: ignore[index]
    return out


# -- OpenDP on numpy -------------------------------------------------------------------


def _day(d: str) -> int:
    return (date.fromisoformat(d) - date.fromisoformat(FIRST_DAY)).days


def _scales(t: Template) -> dict[str, float]:
    """The noise scales Tessera's node uses for this template (same privacy loss)."""
    cals = privacy.calibrate(t.privacy, measure_sensitivities(t.statistic))
    return {c.name: c.scale for c in cals}


def opendp_floor(
    arrays: Arrays,
    hist: Template,
    mean: Template,
    questions: Questions,
    warmup: int,
    reps: int,
) -> dict[str, Any]:
    """Filter and cell index in numpy, counting/summing and noise in OpenDP. No per-person
    bounding (the data's contributions are taken as given): a floor, not a rival."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    bands, cats = hist.group_by
    assert isinstance(bands, BandsDim) and isinstance(cats, CategoriesDim)
    assert [c.codes for c in cats.categories] == [("1",), ("2",), ("3",), ("4",)]
    lut = np.full(256, -1, dtype=np.int64)
    for i, b in enumerate(bands.bands):
        lut[b.min : b.max + 1] = i
    n_cat = len(cats.labels)
    space = (dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance())
    h_scale, m_scales = _scales(hist), _scales(mean)
    count_cells = dp.t.make_count_by_categories(
        *space,
        categories=list(range(hist.n_cells)),
        null_category=False,
        MO="L1Distance<i64>",
        TOA="i64",
    ) >> dp.m.then_laplace(h_scale["count"])
    lo, hi = mean.statistic.lower, mean.statistic.upper
    noisy_sum = (
        dp.t.make_clamp(*space, bounds=(lo, hi))
        >> dp.t.then_sum()  # type: ignore[no-untyped-call]
        >> dp.m.then_laplace(m_scales["sum"])
    )
    noisy_count = dp.t.make_count(*space, TO="i64") >> dp.m.then_laplace(m_scales["count"])

    def keep(params: dict[str, str]) -> npt.NDArray[np.bool_]:
        lo_d, hi_d = _day(params["period_start"]), _day(params["period_end"])
        return (arrays.day >= lo_d) & (arrays.day <= hi_d) & ~arrays.opted_out

    def histogram(_: int) -> object:
        m = keep(questions.next())
        band = lut[arrays.age[m]]
        ok = band >= 0
        return count_cells(band[ok] * n_cat + arrays.category[m][ok])

    def mean_by_category(_: int) -> object:
        m = keep(questions.next())
        cat, age = arrays.category[m], arrays.age[m]
        return [(noisy_sum(age[cat == c]), noisy_count(age[cat == c])) for c in range(n_cat)]

    return {
        "histogram": stats.summary(stats.time_calls(histogram, warmup, reps), warmup),
        "mean": stats.summary(stats.time_calls(mean_by_category, warmup, reps), warmup),
        "note": "numpy filter + cell index, OpenDP count/sum + discrete Laplace at the node's "
        "scales; data already in memory; no per-person contribution bounding",
    }
