"""SSDA903 episodes for one child's period of care: placement moves, legal-status
changes, and how the period ended (or that it is still open)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tessera.synth import calibration as cal
from tessera.synth.cohorts import apportion, weighted_sample
from tessera.synth.dates import NO_DATE, age_years
from tessera.synth.rng import Generator

MAX_EPISODES = 7
_FOSTER_CONNECTED = ("U1", "U2", "U3")
_NEEDS_URN = frozenset({"K1", "K2", "R1", "P3", "S1", "H5"})
_LS_CHANGES = frozenset({"L", "T", "U"})
_CATEGORIES = tuple(c for c, _ in cal.PLACEMENT_CATEGORY_BY_AGE[0])
_FILL_ORDER = (2, 3, 1)  # residential, other, with parents; the rest are fostered


@dataclass(frozen=True)
class Episode:
    decom: int
    rne: str
    ls: str
    place: str
    provider: str
    dec: int  # NO_DATE if open
    rec: str
    reason_place_change: str
    pl_post: str
    urn: str


@dataclass
class Placements:
    """Where one council places children: its own districts and a pool of homes (URNs)."""

    districts: tuple[str, ...]
    region_districts: tuple[str, ...]
    homes: list[str] = field(default_factory=list)

    def urn(self, rng: Generator) -> str:
        if not self.homes or rng.random() < 0.15:
            self.homes.append(f"SC{int(rng.integers(100_000, 1_000_000)):06d}")
        return self.homes[int(rng.integers(0, len(self.homes)))]

    def postcode(self, rng: Generator) -> str:
        u = rng.random()
        if u < 0.70:
            pool = self.districts
        elif u < 0.90:
            pool = self.region_districts
        else:
            pool = cal.OUT_OF_REGION_DISTRICTS
        return f"{pool[int(rng.integers(0, len(pool)))]} {int(rng.integers(0, 10))}"


def placement_categories(rng: Generator, ages: npt.NDArray[np.int64]) -> list[str]:
    """Placement categories for children in care on one day, with the category totals
    fixed at their expected values (so even a small council shows the national mix)
    and each category leaning towards the ages it suits."""
    probs = np.array(
        [[w for _, w in cal.PLACEMENT_CATEGORY_BY_AGE[b]] for b in cal.age_bracket(ages).tolist()]
    ).reshape(ages.size, len(_CATEGORIES))
    totals = apportion(ages.size, probs.sum(axis=0))
    out = ["foster"] * ages.size
    left = np.arange(ages.size, dtype=np.int64)
    for k in _FILL_ORDER:
        chosen = weighted_sample(rng, left, probs[left, k], int(totals[k]))
        for i in chosen.tolist():
            out[i] = _CATEGORIES[k]
        left = np.setdiff1d(left, chosen)
    return out


def placement_code(rng: Generator, age: int, category: str | None = None) -> str:
    if category is None:
        bracket = int(cal.age_bracket(np.array([age]))[0])
        category = cal.draw_one(rng, cal.PLACEMENT_CATEGORY_BY_AGE[bracket])
    if category == "foster":
        return cal.draw_one(rng, cal.FOSTER)
    if category == "parents":
        return "P1"
    if category == "residential":
        return cal.draw_one(rng, cal.RESIDENTIAL_16_PLUS if age >= 16 else cal.RESIDENTIAL_UNDER_16)
    if age < 10:
        return cal.draw_one(rng, cal.OTHER_UNDER_10)
    return cal.draw_one(rng, cal.OTHER_16_PLUS if age >= 16 else cal.OTHER_10_TO_15)


def _provider(rng: Generator, place: str) -> str:
    if place == "P1":
        return "PR0"
    if place.startswith("T"):
        return ""  # temporary placements have no provider (DfE rule 178)
    if place in _FOSTER_CONNECTED:
        return "PR1"
    if place.startswith("R") and place != "R1":
        return "PR3"
    u = rng.random()
    if place == "Z1":
        return ""  # nor has "other placement" (rule 178); the draw keeps the stream
    if place.startswith("U") or place.startswith("A"):
        return "PR1" if u < 0.65 else ("PR4" if u < 0.92 else "PR5")
    return "PR4" if u < 0.65 else ("PR1" if u < 0.85 else ("PR2" if u < 0.92 else "PR5"))


def _first_legal_status(rng: Generator, age: int) -> str:
    ls = cal.draw_one(rng, cal.FIRST_LEGAL_STATUS)
    if ls == "E1" and age >= 10:
        return "C2"
    if ls == "J2" and age < 10:
        return "C1"
    return ls


def _next_legal_status(rng: Generator, ls: str, age: int) -> str:
    if ls == "C1":
        return "E1" if age < 5 and rng.random() < 0.2 else "C2"
    if ls == "V2":
        return "C1" if rng.random() < 0.5 else "C2"
    if ls == "C2":
        return "E1" if age < 5 else "V2"
    return "C2"


def _ceased(rng: Generator, age: int) -> str:
    if age < 5:
        return cal.draw_one(rng, cal.CEASED_UNDER_5)
    return cal.draw_one(rng, cal.CEASED_16_PLUS if age >= 16 else cal.CEASED_5_TO_15)


def care_period(
    rng: Generator,
    *,
    start: int,
    end: int,
    reference_day: int,
    dob: int,
    home_post: str,
    places: Placements,
    final_category: str | None = None,
) -> list[Episode]:
    """Episodes from `start` to `end` (NO_DATE: still looked after on the reference day).

    Episodes follow one another without gaps: each ends the day the next begins,
    with REC X1. A closed period's last episode carries a real reason for ceasing.
    `final_category` fixes the kind of the last placement.
    """
    is_open = end == NO_DATE
    last = reference_day if is_open else end
    span = last - start
    if span < 1:
        raise ValueError("a period of care must last at least a day")
    k = int(min(1 + rng.poisson(1.0), MAX_EPISODES, span))
    cuts: list[int] = np.sort(
        rng.choice(np.arange(start + 1, last), size=k - 1, replace=False)
    ).tolist()
    decoms = [start, *cuts]
    decs = [*decoms[1:], end]
    ages = age_years(np.full(k, dob, dtype=np.int64), np.array(decoms, dtype=np.int64)).tolist()
    if is_open:  # the placement on the reference day follows the child's age then
        ages[-1] = int(age_years(np.array([dob], dtype=np.int64), reference_day)[0])
    out: list[Episode] = []
    ls, place, provider, pl_post, urn = "", "", "", "", ""
    for j in range(k):
        age = int(ages[j])
        final = j == k - 1
        rne = "S" if j == 0 else cal.draw_one(rng, cal.NEW_EPISODE_REASON)
        if final and final_category is not None and rne == "L":
            rne = "T"  # the last placement is a new one
        if j == 0:
            ls = _first_legal_status(rng, age)
        elif rne in _LS_CHANGES:
            ls = _next_legal_status(rng, ls, age)
        reason = ""
        if rne != "L":
            # The code may repeat: a new carer, same kind of placement.
            place = placement_code(rng, age, final_category if final else None)
            provider = _provider(rng, place)
            pl_post = (
                "" if place == "Z1" else (home_post if place == "P1" else places.postcode(rng))
            )
            urn = places.urn(rng) if place in _NEEDS_URN else "XXXXXXX"
            if j > 0:
                reason = cal.draw_one(rng, cal.PLACE_CHANGE_REASON)
        if not final:
            rec = "X1"
        elif is_open:
            rec = ""
        else:
            exit_age = int(age_years(np.array([dob], dtype=np.int64), end)[0])
            rec = _ceased(rng, exit_age)
        out.append(Episode(decoms[j], rne, ls, place, provider, decs[j], rec, reason, pl_post, urn))
    return out
