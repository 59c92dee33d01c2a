"""The scale-0.02 region lands near the published national figures (loose tolerances)."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

from .conftest import POLICE, REF, TRUST, Region, age_on, parse_dmy

FOSTER = {f"U{i}" for i in range(1, 7)}
HOMES_AND_SEMI_INDEPENDENT = {"K1", "K2", "R1", "P3", "S1", "H5"}


def per_10k(count: int, region: Region) -> float:
    return count / region.manifest.child_population * 10_000


def looked_after_on_ref(region: Region) -> list[dict[str, str]]:
    """Each child's episode open on the reference date, with the child's header fields."""
    header = {(r["_council"], r["CHILD"]): r for r in region.councils("ssda903", "header")}
    out = []
    for e in region.councils("ssda903", "episodes"):
        start, end = parse_dmy(e["DECOM"]), e["DEC"] and parse_dmy(e["DEC"])
        if start <= REF and (not end or end > REF):
            out.append({**e, **header[(e["_council"], e["CHILD"])]})
    return out


def test_population_size_and_split(region: Region) -> None:
    sizes = {o.slug: o.child_population or 0 for o in region.manifest.organisations}
    assert region.manifest.child_population == 10_000
    assert sizes["leeds"] > sizes["bradford"] > sizes["kirklees"] > sizes["wakefield"]
    assert sizes["wakefield"] > sizes["calderdale"] > 0


def test_looked_after_rate_age_sex_and_placements(region: Region) -> None:
    lac = looked_after_on_ref(region)
    assert len({(r["_council"], r["CHILD"]) for r in lac}) == len(lac)  # one open episode each
    assert 50 <= per_10k(len(lac), region) <= 90

    brackets: Counter[int] = Counter()
    for r in lac:
        age = age_on(parse_dmy(r["DOB"]), REF)
        brackets[0 if age < 1 else 1 if age < 5 else 2 if age < 10 else 3 if age < 16 else 4] += 1
    share = [brackets[b] / len(lac) for b in range(5)]
    for got, want in zip(share, (0.05, 0.14, 0.17, 0.38, 0.26), strict=True):
        assert abs(got - want) < 0.05, share
    assert 0.5 <= sum(r["SEX"] == "1" for r in lac) / len(lac) <= 0.62

    places = Counter(r["PLACE"] for r in lac)
    foster = sum(places[c] for c in FOSTER) / len(lac)
    homes = sum(places[c] for c in HOMES_AND_SEMI_INDEPENDENT) / len(lac)
    assert 0.58 <= foster <= 0.78, places
    assert 0.02 <= places["P1"] / len(lac) <= 0.12, places
    assert 0.10 <= homes <= 0.25, places


def test_placement_moves_and_history(region: Region) -> None:
    episodes = region.councils("ssda903", "episodes")
    children = {(r["_council"], r["CHILD"]) for r in episodes}
    assert 1.5 <= len(episodes) / len(children) <= 3.5
    starts = [parse_dmy(e["DECOM"]) for e in episodes]
    assert min(starts) >= REF - timedelta(days=3 * 366)
    left = {(r["_council"], r["CHILD"]) for r in episodes if r["REC"] not in ("", "X1")}
    assert 0.5 <= len(left) / len(looked_after_on_ref(region)) <= 1.3


def test_children_in_need_protection_and_referrals(region: Region) -> None:
    open_cin = {
        (r["_council"], r["child_id"])
        for r in region.councils("cin", "cin_episodes")
        if not r["end_date"]
    }
    open_cp = {
        (r["_council"], r["child_id"])
        for r in region.councils("cin", "cp_plans")
        if not r["end_date"]
    }
    assert 280 <= per_10k(len(open_cin), region) <= 380
    assert 32 <= per_10k(len(open_cp), region) <= 52
    assert open_cp <= open_cin

    referrals = region.councils("cin", "referrals")
    year_ago = REF.replace(year=REF.year - 1)
    last_year = [r for r in referrals if date.fromisoformat(r["referral_date"]) > year_ago]
    assert 430 <= per_10k(len(last_year), region) <= 610
    needs = Counter(r["primary_need"] for r in referrals)
    assert 0.50 <= needs["N1"] / len(referrals) <= 0.62
    assert needs.most_common(1)[0][0] == "N1"
    per_child = Counter((r["_council"], r["child_id"]) for r in referrals)
    assert max(per_child.values()) >= 2  # repeat referrals exist: templates must cap
    nfa = sum(r["nfa"] == "true" for r in referrals) / len(referrals)
    assert 0.05 <= nfa <= 0.2


def test_education(region: Region) -> None:
    pupils = region.councils("education", "pupils")
    sen = Counter(r["sen"] for r in pupils)
    assert abs(sen["NONE"] / len(pupils) - 0.84) < 0.02
    assert abs(sen["SEN_SUPPORT"] / len(pupils) - 0.13) < 0.02
    assert abs(sen["EHC_PLAN"] / len(pupils) - 0.03) < 0.01
    assert 0.2 <= sum(r["fsm"] == "true" for r in pupils) / len(pupils) <= 0.32
    for r in pupils:
        assert 4 <= age_on(date.fromisoformat(r["dob"]), REF) <= 16

    in_need = {r["upn"] for r in region.councils("cin", "children") if r["upn"]}
    attendance = region.councils("education", "attendance")
    for r in attendance:
        assert 115 <= int(r["sessions_possible"]) <= 145
        assert 0 <= int(r["sessions_missed"]) <= int(r["sessions_possible"])

    def absence(rows: list[dict[str, str]]) -> float:
        missed = sum(int(r["sessions_missed"]) for r in rows)
        return missed / sum(int(r["sessions_possible"]) for r in rows)

    overall = absence(attendance)
    assert 0.04 <= overall <= 0.11
    assert absence([r for r in attendance if r["upn"] in in_need]) > 1.5 * overall
    kinds = Counter(r["kind"] for r in region.councils("education", "exclusions"))
    assert kinds["SUSPENSION"] > 10 * kinds["PERMANENT"] > 0


def test_health(region: Region) -> None:
    rows = region.table(TRUST, "health", "ed_attendances")
    under5 = [r for r in rows if int(r["age_years"]) < 5]
    assert 0.33 <= sum(r["injury"] == "true" for r in under5) / len(under5) <= 0.47
    people: dict[str, set[str]] = {}
    for r in rows:
        if r["nhs_number"]:
            people.setdefault(r["nhs_number"], set()).add(r["opted_out"])
    assert all(len(v) == 1 for v in people.values())  # the opt-out is per person
    opted = sum("true" in v for v in people.values()) / len(people)
    assert 0.03 <= opted <= 0.07
    assert 0.97 <= sum(bool(r["nhs_number"]) for r in rows) / len(rows) <= 1.0
    dates = [date.fromisoformat(r["arrival_date"]) for r in rows]
    assert REF - timedelta(days=731) <= min(dates) and max(dates) < REF


def test_linkage_key_coverage(region: Region) -> None:
    def share(rows: list[dict[str, str]]) -> float:
        return sum(bool(r["nhs_number"]) for r in rows) / len(rows)

    assert 0.85 <= share(region.councils("education", "pupils")) <= 0.95
    assert 0.65 <= share(region.councils("cin", "children")) <= 0.85
    persons = {r["person_id"]: r for r in region.table(POLICE, "police", "incidents")}
    assert 0.45 <= share(list(persons.values())) <= 0.75


def test_police_incidents_concentrate_among_children_known_to_social_care(region: Region) -> None:
    known = {r["nhs_number"] for r in region.councils("cin", "children") if r["nhs_number"]}
    pop = region.population
    matched = [r for r in region.table(POLICE, "police", "incidents") if r["nhs_number"]]
    types = Counter(r["incident_type"] for r in matched)
    assert set(types) == {
        "DOMESTIC_ABUSE_NOTIFICATION",
        "MISSING_EPISODE",
        "EXPLOITATION_CONCERN",
        "YOUTH_OFFENCE",
    }
    known_share_of_incidents = sum(r["nhs_number"] in known for r in matched) / len(matched)
    known_share_of_children = len(known) / pop.size
    assert known_share_of_incidents > 3 * known_share_of_children
