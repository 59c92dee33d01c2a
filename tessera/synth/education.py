"""Pupils, termly attendance and exclusions for one council's schools (`education`)."""

from __future__ import annotations

from datetime import date

import numpy as np

from tessera.synth import calibration as cal
from tessera.synth import nhs_number
from tessera.synth.dates import Days, age_years, day, iso, to_date, weekday
from tessera.synth.population import Population
from tessera.synth.rng import Generator
from tessera.synth.social_care import CareFlags
from tessera.synth.writer import Tables, bools


def last_academic_year(reference_date: date) -> int:
    """The first calendar year of the last complete academic year (September to July)."""
    current = reference_date.year if reference_date.month >= 9 else reference_date.year - 1
    return current - 1


def academic_year_label(start_year: int) -> str:
    return f"{start_year}/{(start_year + 1) % 100:02d}"


def _school_days(rng: Generator, first: int, last: int, n: int) -> Days:
    """`n` weekdays between two days (a weekend day moves to the Monday after)."""
    days = rng.integers(first, last + 1, size=n).astype(np.int64)
    wd = weekday(days)
    result: Days = days + np.where(wd == 5, 2, np.where(wd == 6, 1, 0))
    return result


def simulate_education(rng: Generator, pop: Population, council: int, flags: CareFlags) -> Tables:
    members = pop.members(council)
    idx = members[pop.in_school[members]]
    idx = idx[np.argsort([pop.upn[i] for i in idx.tolist()], kind="stable")]
    n = idx.size
    upn = [pop.upn[i] for i in idx.tolist()]
    in_need, fsm, male = flags.in_need[idx], pop.fsm[idx], pop.male[idx]

    score = rng.standard_normal(n) + 0.9 * in_need + 0.4 * fsm + 0.3 * male
    score += 0.8 * flags.looked_after_now[idx]
    order = np.argsort(-score, kind="stable")
    sen = np.full(n, "NONE", dtype=object)
    start = 0
    for status, share in cal.SEN_SHARES:
        count = round(n * share)
        sen[order[start : start + count]] = status
        start += count
    has_sen = sen != "NONE"

    pupils: Tables = {}
    pupils["pupils"] = {
        "upn": upn,
        "nhs_number": nhs_number.recorded(
            [pop.nhs[i] for i in idx.tolist()],
            rng,
            present=cal.NHS_PRESENT["education"],
            transposed=cal.NHS_TRANSPOSED,
        ),
        "dob": iso(pop.dob[idx]),
        "fsm": bools(fsm),
        "sen": [str(s) for s in sen.tolist()],
    }

    # The last complete academic year: Reception (4 on 31 August) to Year 11 (15).
    year = last_academic_year(to_date(pop.reference_day))
    age_then = age_years(pop.dob[idx], day(date(year, 8, 31)))
    on_roll = np.flatnonzero((age_then >= 4) & (age_then <= 15))
    m = cal.ABSENCE_MEAN * np.where(fsm, 1.5, 1.0) * np.where(in_need, 2.2, 1.0)
    m = np.minimum(m * np.where(has_sen, 1.2, 1.0), 0.5)[on_roll]
    rate = rng.beta(m * 6.0, (1.0 - m) * 6.0)
    possible_cols, missed_cols = [], []
    for (_, lo, hi), factor in zip(cal.TERM_SESSIONS, (0.9, 1.0, 1.15), strict=True):
        possible = rng.integers(lo, hi, size=on_roll.size)
        possible_cols.append(possible)
        missed_cols.append(rng.binomial(possible, np.minimum(rate * factor, 1.0)))
    terms = len(cal.TERM_SESSIONS)
    pupils["attendance"] = {
        "upn": [upn[k] for k in on_roll.tolist() for _ in range(terms)],
        "academic_year": [academic_year_label(year)] * (on_roll.size * terms),
        "term": [t for t, _, _ in cal.TERM_SESSIONS] * on_roll.size,
        "sessions_possible": [str(v) for v in np.stack(possible_cols, 1).ravel().tolist()],
        "sessions_missed": [str(v) for v in np.stack(missed_cols, 1).ravel().tolist()],
    }

    # Suspensions cluster among a few pupils; permanent exclusions are rare.
    secondary = age_then[on_roll] >= 11
    mult = (np.where(in_need, 4.0, 1.0) * np.where(fsm, 2.5, 1.0) * np.where(has_sen, 2.0, 1.0))[
        on_roll
    ]
    lam = np.where(secondary, 0.07, 0.008) * mult * rng.gamma(0.5, 2.0, size=on_roll.size)
    suspensions = np.minimum(rng.poisson(lam), 10)
    permanent = rng.random(on_roll.size) < np.minimum(
        np.where(secondary, 1.2e-3, 1.5e-4) * mult, 0.2
    )
    who = np.concatenate([np.repeat(on_roll, suspensions), on_roll[permanent]])
    kind = ["SUSPENSION"] * int(suspensions.sum()) + ["PERMANENT"] * int(permanent.sum())
    when = _school_days(rng, day(date(year, 9, 3)), day(date(year + 1, 7, 18)), who.size)
    rows = sorted(zip((upn[k] for k in who.tolist()), iso(when), kind, strict=True))
    pupils["exclusions"] = {
        "upn": [r[0] for r in rows],
        "exclusion_date": [r[1] for r in rows],
        "kind": [r[2] for r in rows],
    }
    return pupils
