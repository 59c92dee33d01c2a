"""The synthetic region's agencies as overlap inputs, with a brute-force join.

For tests, the benchmark and the demo: the region's generators are run in memory
(tessera.synth), each agency's records are reduced to one row per privacy unit,
exactly as a node's query would, and `brute_force` computes the statistic by a
plain join on the recorded keys, for comparison with the protocol's exact path.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from tessera.overlap.nhs import normalise
from tessera.overlap.protocol import Kind, OverlapQuery
from tessera.synth import calibration as cal
from tessera.synth.health import simulate_health
from tessera.synth.police import simulate_police
from tessera.synth.population import build_population
from tessera.synth.rng import make_rng
from tessera.synth.social_care import CareFlags, simulate_council

AGE_BRACKETS = ("under 1", "1-4", "5-9", "10-15", "16 and over")
REFERENCE = date(2026, 3, 31)

Rows = list[tuple[str | None, int]]


def age_bracket(years: int) -> int:
    if years < 1:
        return 0
    if years <= 4:
        return 1
    if years <= 9:
        return 2
    if years <= 15:
        return 3
    return 4


def _age(dob: str, on: date) -> int:
    d = date.fromisoformat(dob)
    return on.year - d.year - ((on.month, on.day) < (d.month, d.day))


@dataclass(frozen=True)
class Region:
    """One row per privacy unit: (NHS number as recorded, category index)."""

    cin: Rows  # children known to children's social care, by age bracket on the reference day
    police_da: Rows  # children with a domestic-abuse notification (category 0)
    police_any: Rows  # children with any police incident (category 0)
    health_injury_u5: Rows  # under-fives with an ED injury attendance, by age 0..4
    health_any: Rows  # children with any ED attendance, by age bracket at the latest


def region(scale: float = 0.02, seed: int = 1) -> Region:
    pop = build_population(make_rng(seed, "population"), scale, REFERENCE)
    flags = CareFlags.empty(pop.size)
    cin: Rows = []
    for k, council in enumerate(cal.COUNCILS):
        _, tables = simulate_council(make_rng(seed, f"social_care/{council.slug}"), pop, k, flags)
        ch = tables["children"]
        for nhs, dob in zip(ch["nhs_number"], ch["dob"], strict=True):
            cin.append((nhs, age_bracket(_age(dob, REFERENCE))))
    police = simulate_police(make_rng(seed, "police"), pop, flags)["incidents"]
    da: dict[str, str] = {}
    anyone: dict[str, str] = {}
    for pid, nhs, kind in zip(
        police["person_id"], police["nhs_number"], police["incident_type"], strict=True
    ):
        anyone[pid] = nhs
        if kind == "DOMESTIC_ABUSE_NOTIFICATION":
            da[pid] = nhs
    ed = simulate_health(make_rng(seed, "health"), pop, flags)["ed_attendances"]
    # The health dataset's unit is the NHS number; a row without one is its own unit.
    injury: dict[str, int] = {}
    latest: dict[str, tuple[str, int]] = {}
    blank_injury: Rows = []
    blank_any: Rows = []
    for nhs, arrived, age, inj in zip(
        ed["nhs_number"], ed["arrival_date"], ed["age_years"], ed["injury"], strict=True
    ):
        years = int(age)
        if not nhs:
            blank_any.append((None, age_bracket(years)))
            if inj == "true" and years < 5:
                blank_injury.append((None, years))
            continue
        if nhs not in latest or latest[nhs][0] < arrived:
            latest[nhs] = (arrived, years)
        if inj == "true" and years < 5:
            injury[nhs] = min(injury.get(nhs, years), years)
    return Region(
        cin=cin,
        police_da=[(n, 0) for n in da.values()],
        police_any=[(n, 0) for n in anyone.values()],
        health_injury_u5=[(n, a) for n, a in injury.items()] + blank_injury,
        health_any=[(n, age_bracket(a)) for n, (_, a) in latest.items()] + blank_any,
    )


def brute_force(
    query: OverlapQuery, inputs: Sequence[Rows]
) -> tuple[list[int], dict[str, list[int]]]:
    """The statistic by a plain join on valid, normalised keys, and the "not linkable"
    counts: what the protocol's exact path must reproduce."""
    members: list[dict[str, int]] = []
    not_linkable: dict[str, list[int]] = {}
    for i, rows in enumerate(inputs):
        keys: dict[str, int] = {}
        bad = [0] * query.subsets(i)
        for raw, category in rows:
            cat = category if i == query.category_party else 0
            nhs = normalise(raw)
            if nhs is None:
                bad[cat] += 1
            else:
                keys.setdefault(nhs, cat)
        members.append(keys)
        not_linkable[query.parties[i]] = bad
    d = query.category_party
    everyone = set().union(*(m.keys() for m in members))
    out = [0] * len(query.labels())
    for nhs in everyone:
        held = [nhs in m for m in members]
        category = members[d].get(nhs, -1)
        if query.kind is Kind.ALL:
            ok = all(held)
        elif query.kind is Kind.A_NOT_B:
            ok = held[query.a] and not held[query.b]
        else:
            ok = sum(held) >= query.k
        if ok:
            out[category if category >= 0 else len(query.categories)] += 1
    return out, not_linkable


def category_sizes(rows: Rows) -> Tally[int]:
    return Tally(c for _, c in rows)
