"""Children's social care in one council: referrals, children-in-need episodes,
child protection plans and periods of care (the `cin` and `ssda903` datasets).

Stocks on the reference day are set exactly from the rates per 10,000 children
(looked after, on a plan, in need); flows (referrals, children who left care)
are tuned so that about the national number of referrals fall in the last year.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tessera.synth import calibration as cal
from tessera.synth.care_episodes import Placements, care_period, placement_categories
from tessera.synth.cohorts import Index, pick
from tessera.synth.dates import NO_DATE, Days, day, to_date, years_before
from tessera.synth.population import Population
from tessera.synth.rng import Generator
from tessera.synth.social_care_tables import Records, build_tables
from tessera.synth.writer import Tables

Flags = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class CareFlags:
    """What social care knows of each child in the population (region-wide arrays)."""

    referred: Flags
    in_need: Flags  # any children-in-need episode in the history
    cp: Flags  # any child protection plan
    looked_after_now: Flags
    looked_after_ever: Flags

    @classmethod
    def empty(cls, n: int) -> CareFlags:
        return cls(*(np.zeros(n, dtype=np.bool_) for _ in range(5)))


@dataclass
class _Council:
    rng: Generator
    members: Index  # population indices
    dob: Days
    age_days: Days
    age_years: Index
    bracket: Index
    male: Flags
    weight: npt.NDArray[np.float64]
    ref: int
    history_start: int
    available: Flags
    rec: Records = field(default_factory=Records)

    def pick(self, min_days: int, total: int, mix: tuple[float, ...], male_share: float) -> Index:
        eligible = self.available & (self.age_days >= min_days)
        chosen = pick(
            self.rng, eligible, self.bracket, self.male, self.weight, total, mix, male_share
        )
        self.available[chosen] = False
        return chosen

    def between(self, lo: int, hi: int) -> int:
        """A day in [lo, hi] (hi when the range is empty)."""
        return hi if hi <= lo else int(self.rng.integers(lo, hi + 1))

    def earlier_episode(self, pos: int, before: int, chance: float) -> None:
        """Perhaps a closed in-need episode some months before `before`."""
        lo = max(self.history_start, int(self.dob[pos]))
        if before - lo < 90 or self.rng.random() >= chance:
            return
        start = self.between(lo, before - 60)
        end = self.between(start + 1, min(start + 300, before - 30))
        self.rec.episode(pos, start, end, cal.draw_one(self.rng, cal.NEED))

    def plan_before(self, pos: int, cin_start: int, until: int, chance: float) -> None:
        """Perhaps a protection plan that ended when the child came into care."""
        if until - cin_start >= 14 and self.rng.random() < chance:
            start = self.between(cin_start, until - 7)
            self.rec.plan(self.rng, pos, start, until)


def _in_care(
    c: _Council, positions: Index, places: Placements, home_post: list[str], *, still: bool
) -> None:
    rng, three_years = c.rng, c.ref - c.history_start
    categories: list[str | None] = [None] * positions.size
    if still:
        categories = [*placement_categories(rng, c.age_years[positions])]
    for pos, category in zip(positions.tolist(), categories, strict=True):
        dob = int(c.dob[pos])
        if still:
            end = NO_DATE
            start = c.ref - c.between(1, min(int(c.age_days[pos]) - 1, three_years))
        else:
            lo = max(c.history_start, dob + 1)
            end = c.between(lo + 1, c.ref - 1)
            start = end - int(np.clip(rng.exponential(300), 1, end - lo))
        need = cal.draw_one(rng, cal.LAC_NEED)
        cin_start = max(dob, start - c.between(0, 180))
        cin_end = NO_DATE if still else min(end + c.between(0, 120), c.ref - 1)
        c.earlier_episode(pos, cin_start, 0.15)
        c.rec.episode(pos, cin_start, cin_end, need)
        c.plan_before(pos, cin_start, start, 0.35)
        c.rec.period(
            pos,
            need,
            care_period(
                rng,
                start=start,
                end=end,
                reference_day=c.ref,
                dob=dob,
                home_post=home_post[pos],
                places=places,
                final_category=category,
            ),
        )


def _on_plan(c: _Council, positions: Index) -> None:
    for pos in positions.tolist():
        plan_start = c.ref - c.between(1, min(int(c.age_days[pos]) - 1, 540))
        cin_start = max(int(c.dob[pos]), plan_start - c.between(0, 120))
        c.earlier_episode(pos, cin_start, 0.2)
        c.rec.episode(pos, cin_start, NO_DATE, cal.draw_one(c.rng, cal.NEED))
        c.rec.plan(c.rng, pos, plan_start, NO_DATE)


def _in_need(c: _Council, positions: Index) -> None:
    three_years = c.ref - c.history_start
    for pos in positions.tolist():
        longest = min(int(c.age_days[pos]) - 1, three_years)
        elapsed = int(np.clip(c.rng.exponential(330), 1, max(longest, 1)))
        start = c.ref - elapsed
        c.earlier_episode(pos, start, 0.2)
        c.rec.episode(pos, start, NO_DATE, cal.draw_one(c.rng, cal.NEED))
        if elapsed >= 200 and c.rng.random() < 0.2:  # a plan since stepped down
            plan_start = start + c.between(14, 60)
            c.rec.plan(c.rng, pos, plan_start, min(plan_start + c.between(90, 400), c.ref - 1))


_REPEAT_SHARE = 0.15  # children with a second, earlier closed episode


def _closed_cohort(c: _Council, last_year: float) -> Index:
    """Children for closed in-need episodes: enough that about `last_year` of their
    episodes start in the last year (their starts spread over the history)."""
    if last_year <= 0:
        return np.empty(0, dtype=np.int64)
    plenty = round(last_year * cal.HISTORY_YEARS * 1.5) + 1
    pool = c.rng.permutation(c.pick(1, plenty, cal.CIN_AGE_MIX, cal.CIN_MALE_SHARE))
    lo = np.maximum(c.history_start, c.dob[pool])
    expected = (1 + _REPEAT_SHARE) * np.minimum(1.0, 365.0 / (c.ref - lo))
    take = int(np.searchsorted(np.cumsum(expected), last_year))
    c.available[pool[take:]] = True
    return np.sort(pool[:take])


def _closed_in_need(c: _Council, positions: Index) -> None:
    rng = c.rng
    for pos in positions.tolist():
        lo = max(c.history_start, int(c.dob[pos]))
        k = 2 if rng.random() < _REPEAT_SHARE else 1
        starts = np.unique(rng.integers(lo, c.ref, size=k)).tolist()
        for j, start in enumerate(starts):
            bound = starts[j + 1] - 1 if j + 1 < len(starts) else c.ref - 1
            short = rng.random() < 0.35
            length = c.between(7, 60) if short else int(np.clip(rng.exponential(250), 30, 1000))
            if start + length > bound:
                length = int((bound - start) * rng.uniform(0.1, 0.95))
            end = start + max(length, 0)
            c.rec.episode(pos, start, end, cal.draw_one(rng, cal.NEED))
            if end - start >= 120 and rng.random() < 0.2:
                plan_start = start + c.between(10, 40)
                c.rec.plan(rng, pos, plan_start, c.between(plan_start + 30, end))


def _no_further_action(c: _Council, count: int) -> None:
    eligible = np.flatnonzero(c.age_days >= 1)
    p = c.weight[eligible] / c.weight[eligible].sum()
    for pos in c.rng.choice(eligible, size=count, p=p).tolist():
        when = c.between(max(c.history_start, int(c.dob[pos])), c.ref - 1)
        c.rec.referral(pos, when, cal.draw_one(c.rng, cal.NEED), nfa=True)


def simulate_council(
    rng: Generator, pop: Population, council: int, flags: CareFlags
) -> tuple[Tables, Tables]:
    """The council's `ssda903` and `cin` tables; sets `flags` for its children."""
    info = cal.COUNCILS[council]
    members = pop.members(council)
    n, factor, ref = members.size, info.care_factor, pop.reference_day
    dob, age = pop.dob[members], pop.age()[members]
    c = _Council(
        rng=rng,
        members=members,
        dob=dob,
        age_days=ref - dob,
        age_years=age,
        bracket=cal.age_bracket(age),
        male=pop.male[members],
        weight=np.exp(0.6 * pop.deprivation[members]),
        ref=ref,
        history_start=day(years_before(to_date(ref), cal.HISTORY_YEARS)),
        available=np.ones(n, dtype=np.bool_),
    )
    per_10k = n * factor / 10_000
    in_care = c.pick(
        7, round(per_10k * cal.LOOKED_AFTER_PER_10K), cal.LAC_AGE_MIX, cal.LAC_MALE_SHARE
    )
    on_plan = c.pick(7, round(per_10k * cal.CP_PLAN_PER_10K), cal.CP_AGE_MIX, cal.CP_MALE_SHARE)
    other = round(per_10k * cal.IN_NEED_PER_10K) - in_care.size - on_plan.size
    in_need = c.pick(2, other, cal.CIN_AGE_MIX, cal.CIN_MALE_SHARE)
    left_care = c.pick(
        30, round(in_care.size * cal.FORMER_LAC_PER_LAC), cal.FORMER_LAC_AGE_MIX, 0.55
    )

    region = tuple(d for other_c in cal.COUNCILS if other_c is not info for d in other_c.districts)
    places = Placements(info.districts, region)
    home_post = [pop.home_post[i] for i in members.tolist()]
    _in_care(c, in_care, places, home_post, still=True)
    _on_plan(c, on_plan)
    _in_need(c, in_need)
    _in_care(c, left_care, places, home_post, still=False)

    # Top up the flow with closed episodes and referrals with no further action, so that
    # the last year holds about the national rate of referrals.
    target = per_10k * cal.REFERRALS_PER_10K_YEAR
    so_far = c.rec.referrals_since(ref - 365)
    _closed_in_need(c, _closed_cohort(c, target * (1 - cal.NFA_SHARE) - so_far))
    _no_further_action(c, round(target * cal.NFA_SHARE * cal.HISTORY_YEARS))

    looked_after = np.concatenate([in_care, left_care])
    flags.looked_after_now[members[in_care]] = True
    flags.looked_after_ever[members[looked_after]] = True
    flags.in_need[members[sorted({r[0] for r in c.rec.episodes})]] = True
    flags.cp[members[sorted({r[0] for r in c.rec.plans})]] = True
    flags.referred[members[sorted({r[0] for r in c.rec.referrals})]] = True
    return build_tables(rng, pop, members, info.prefix, c.rec)
