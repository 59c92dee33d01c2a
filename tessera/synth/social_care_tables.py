"""Turning one council's social-care records into its `ssda903` and `cin` files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tessera import schemas
from tessera.synth import calibration as cal
from tessera.synth import nhs_number
from tessera.synth.care_episodes import Episode
from tessera.synth.cohorts import Index
from tessera.synth.dates import dmy_one, iso_one
from tessera.synth.population import Population
from tessera.synth.rng import Generator
from tessera.synth.writer import Columns, Tables


@dataclass
class Records:
    """Events for the children of one council, by position in the council's member list."""

    referrals: list[tuple[int, int, str, bool]] = field(default_factory=list)  # pos, day, need, nfa
    episodes: list[tuple[int, int, int, str]] = field(default_factory=list)  # pos, start, end, need
    plans: list[tuple[int, int, int, str]] = field(default_factory=list)  # pos, start, end, cat
    periods: list[tuple[int, str, list[Episode]]] = field(default_factory=list)  # pos, need, eps

    def referral(self, pos: int, when: int, need: str, *, nfa: bool) -> None:
        self.referrals.append((pos, when, need, nfa))

    def episode(self, pos: int, start: int, end: int, need: str) -> None:
        """An in-need episode, opened by a referral on its first day."""
        self.episodes.append((pos, start, end, need))
        self.referral(pos, start, need, nfa=False)

    def plan(self, rng: Generator, pos: int, start: int, end: int) -> None:
        self.plans.append((pos, start, end, cal.draw_one(rng, cal.CP_CATEGORY)))

    def period(self, pos: int, need: str, episodes: list[Episode]) -> None:
        self.periods.append((pos, need, episodes))

    def referrals_since(self, first_day: int) -> int:
        return sum(1 for r in self.referrals if r[1] >= first_day)


def _columns(names: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> Columns:
    return {name: [r[k] for r in rows] for k, name in enumerate(names)}


def build_tables(
    rng: Generator, pop: Population, members: Index, prefix: str, rec: Records
) -> tuple[Tables, Tables]:
    known = sorted({r[0] for r in rec.referrals})
    numbers = (rng.choice(900_000, size=len(known), replace=False) + 100_000).tolist()
    ids = {pos: f"{prefix}{num:06d}" for pos, num in zip(known, numbers, strict=True)}
    people = [int(members[pos]) for pos in known]
    nhs = nhs_number.recorded(
        [pop.nhs[i] for i in people],
        rng,
        present=cal.NHS_PRESENT["cin"],
        transposed=cal.NHS_TRANSPOSED,
    )
    upn_kept = (rng.random(len(known)) < 0.95).tolist()
    children = [
        (
            ids[pos],
            iso_one(int(pop.dob[i])),
            "1" if pop.male[i] else "2",
            pop.upn[i] if keep else "",
            number,
        )
        for pos, i, keep, number in zip(known, people, upn_kept, nhs, strict=True)
    ]
    sources = cal.draw(rng, cal.REFERRAL_SOURCE, len(rec.referrals))
    referrals = [
        (ids[pos], iso_one(when), source, need, "true" if nfa else "false")
        for (pos, when, need, nfa), source in zip(rec.referrals, sources, strict=True)
    ]
    episodes = [(ids[p], iso_one(s), iso_one(e), need) for p, s, e, need in rec.episodes]
    plans = [(ids[p], iso_one(s), iso_one(e), cat) for p, s, e, cat in rec.plans]
    cin: Tables = {
        "children": _columns(("child_id", "dob", "sex", "upn", "nhs_number"), sorted(children)),
        "referrals": _columns(
            ("child_id", "referral_date", "referral_source", "primary_need", "nfa"),
            sorted(referrals),
        ),
        "cin_episodes": _columns(
            ("child_id", "start_date", "end_date", "primary_need"), sorted(episodes)
        ),
        "cp_plans": _columns(
            ("child_id", "start_date", "end_date", "initial_category"), sorted(plans)
        ),
    }
    return _ssda903(rng, pop, members, ids, rec), cin


_HEADER = schemas.column_names("ssda903", "header")
_EPISODES = schemas.column_names("ssda903", "episodes")


def _ssda903(
    rng: Generator, pop: Population, members: Index, ids: dict[int, str], rec: Records
) -> Tables:
    header: list[tuple[str, ...]] = []
    dated: list[tuple[str, int, Episode, str, str]] = []  # child, DECOM, episode, need, home
    ages = pop.age()
    for pos, need, eps in rec.periods:
        i = int(members[pos])
        mother, baby = "", ""
        if not pop.male[i] and ages[i] >= 12:
            is_mother = bool(ages[i] >= 15 and rng.random() < 0.04)
            mother = "1" if is_mother else "0"
            if is_mother:
                baby = dmy_one(pop.reference_day - int(rng.integers(30, 700)))
        header.append(
            (
                ids[pos],
                "1" if pop.male[i] else "2",
                dmy_one(int(pop.dob[i])),
                pop.ethnic[i],
                pop.upn[i],
                mother,
                baby,
            )
        )
        dated += [(ids[pos], e.decom, e, need, pop.home_post[i]) for e in eps]
    dated.sort(key=lambda row: (row[0], row[1]))
    episodes = [
        (
            child,
            dmy_one(e.decom),
            e.rne,
            e.ls,
            need,
            e.place,
            e.provider,
            dmy_one(e.dec),
            e.rec,
            e.reason_place_change,
            home,
            e.pl_post,
            e.urn,
        )
        for child, _, e, need, home in dated
    ]
    return {"header": _columns(_HEADER, sorted(header)), "episodes": _columns(_EPISODES, episodes)}
