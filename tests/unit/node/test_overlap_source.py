"""node.overlap_source.members against a pandas brute force on small hand-made DuckDB
files: keys missing, blank or with a wrong check digit, one key on several units (in
several spellings), several keys on one unit, filters, categories, choose/by and
per-person opt-out. The keyed order is recomputed in Python from DuckDB's row hash,
as the compiler's reference test does."""

from __future__ import annotations

import copy
import dataclasses
import os
import random
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from tessera import schemas
from tessera.node import compiler
from tessera.node.overlap_source import members, members_sql
from tessera.overlap.nhs import check_digit, normalise
from tessera.overlap.protocol import Counter, Party, run_local
from tessera.overlap.spec import overlap_query
from tessera.templates import bind, load_toml
from tessera.templates.model import ParamValue, Template
from tessera.templates.parse import parse, to_dict
from tests.unit.node.test_compiler_reference import record_key, source_rows, write_db

REPO = Path(__file__).resolve().parents[3]
REFERENCE_5 = REPO / "examples" / "templates" / "overlap-domestic-abuse-known-to-social-care.toml"
THREE = REPO / "examples" / "templates" / "overlap-known-to-two-of-three-agencies.toml"
ORDER_KEY = bytes(range(32))
ON = date(2026, 3, 31)
VALUES = {"period_start": "2025-04-01", "period_end": "2026-03-31", "on_date": "2026-03-31"}


def nhs(i: int) -> str:
    """The i-th valid NHS number of a small supply (nine digits, then the check digit)."""
    n = 0
    base = 400_000_000 + 7919 * i
    while True:
        first = f"{base + n:09d}"
        c = check_digit(first)
        if c is not None:
            return first + str(c)
        n += 1


def invalid(i: int) -> str:
    good = nhs(i)
    return good[:9] + str((int(good[9]) + 1) % 10)


def template(path: Path = REFERENCE_5) -> Template:
    return load_toml(path.read_text(encoding="utf-8"))


def values(t: Template, raw: dict[str, str] | None = None) -> dict[str, ParamValue]:
    raw = raw or VALUES
    return bind(t, {p.name: raw[p.name] for p in t.parameters})


def run(
    tmp: Path, t: Template, party: int, rows: dict[str, list[dict[str, Any]]], **kw: Any
) -> list[tuple[str | None, int]]:
    spec = t.overlap
    assert spec is not None
    name = spec.datasets[party].dataset
    db = write_db(tmp / f"{name}-{os.urandom(4).hex()}.duckdb", name, rows)
    with duckdb.connect(str(db), read_only=True) as con:
        cur = con.cursor()
        try:
            return members(
                cur,
                t,
                values(t),
                party,
                exclude_opted_out=kw.get("exclude", t.purpose != schemas.DIRECT_CARE),
                order_key=kw.get("order_key", ORDER_KEY),
            )
        finally:
            cur.close()


def hashed_frame(tmp: Path, dataset: str, source: str, rows: dict[str, Any]) -> pd.DataFrame:
    """The source's rows with DuckDB's hash of each whole row (the only value taken
    from DuckDB) as a pandas frame."""
    ds = schemas.dataset(dataset)
    assert ds is not None
    db = write_db(tmp / f"ref-{os.urandom(4).hex()}.duckdb", dataset, rows)
    got = source_rows(db, dataset, source)
    cols = [c.name for c in ds.sources[source].columns]
    frame = pd.DataFrame([r for r, _ in got], columns=cols)
    frame["row_hash"] = [h for _, h in got]
    return frame


def brute_force(
    frame: pd.DataFrame, unit: str, cell: pd.Series, order_key: bytes = ORDER_KEY
) -> list[tuple[str | None, int]]:
    """members() by hand: keyed order per record, each unit's first in-domain record
    decides its cell, its first non-blank key is its key, units in keyed order of their
    first record, then one element per valid normalised NHS number."""
    f = frame.assign(cell=cell)
    f = f[f[unit].notna() & f["cell"].notna()].copy()
    f["cell"] = f["cell"].astype(int)
    f["k"] = [record_key(h, c, order_key) for h, c in zip(f["row_hash"], f["cell"], strict=True)]
    out: list[tuple[int, str | None, int]] = []
    for _, g in f.groupby(unit):
        g = g.sort_values("k")
        keyed = g[g["nhs_number"].fillna("").str.strip() != ""]
        key = None if keyed.empty else keyed.sort_values(["k", "nhs_number"]).iloc[0]
        out.append(
            (
                int(g["k"].iloc[0]),
                None if key is None else str(key["nhs_number"]),
                int(g["cell"].iloc[0]),
            )
        )
    out.sort(key=lambda r: (r[0], r[1] or ""))
    seen: set[str] = set()
    result = []
    for _, key, c in out:
        n = normalise(key)
        if n is not None and n in seen:
            continue
        if n is not None:
            seen.add(n)
        result.append((key, c))
    return result


# --- police (not the categories party) ------------------------------------------------


def police_rows() -> list[dict[str, Any]]:
    da, miss = "DOMESTIC_ABUSE_NOTIFICATION", "MISSING_EPISODE"
    d = date(2025, 6, 1)
    rows = [
        ("P01", nhs(1), d, da),
        ("P01", nhs(1), date(2025, 7, 1), da),  # two records, one key
        ("P02", None, d, da),
        ("P02", nhs(2), date(2025, 8, 1), da),  # the key on its second record only
        ("P03", nhs(3), d, da),
        ("P03", nhs(4), date(2025, 9, 1), da),  # two different keys on one unit
        ("P04", None, d, da),  # no key at all
        ("P05", invalid(5), d, da),  # a wrong check digit
        ("P06", nhs(6), d, da),
        ("P07", nhs(6)[:3] + " " + nhs(6)[3:6] + " " + nhs(6)[6:], d, da),  # P06 again
        ("P08", nhs(8), d, miss),  # filtered out: another incident type
        ("P09", nhs(9), date(2024, 1, 1), da),  # filtered out: before the period
        ("P10", "   ", d, da),  # a blank key: not linkable
        ("P11", nhs(11) + ".0", d, da),  # a spreadsheet's float: linkable
        ("P12", nhs(12), d, da),
        ("P12", invalid(12), d, da),  # a valid and an invalid key
    ]
    for i in range(13, 60):  # and some ordinary children, a few sharing keys
        rows.append((f"P{i:02d}", nhs(100 + i % 40), date(2025, 4 + i % 9, 1 + i % 27), da))
    return [
        {"person_id": p, "nhs_number": k, "incident_date": day, "incident_type": kind}
        for p, k, day, kind in rows
    ]


def police_reference(tmp: Path, rows: list[dict[str, Any]], order_key: bytes = ORDER_KEY) -> Any:
    frame = hashed_frame(tmp, "police", "incidents", {"incidents": rows})
    keep = (frame["incident_type"] == "DOMESTIC_ABUSE_NOTIFICATION") & (
        frame["incident_date"].between(date(2025, 4, 1), date(2026, 3, 31))
    )
    return brute_force(frame, "person_id", keep.map({True: 0, False: None}), order_key)


def test_police_party_matches_brute_force(tmp_path: Path) -> None:
    rows = police_rows()
    got = run(tmp_path, template(), 0, {"incidents": rows})
    want = police_reference(tmp_path, rows)
    assert got == want
    keys = [k for k, _ in got]
    assert all(c == 0 for _, c in got)  # not the categories party: one category
    # The cases the data was built for.
    assert nhs(1) in keys and nhs(2) in keys  # a key on the second record only
    assert (nhs(3) in keys) != (nhs(4) in keys)  # one key of a unit with two
    assert invalid(5) in keys and None in keys and "   " not in keys
    assert sum(normalise(k) == nhs(6) for k in keys) == 1  # two spellings, one child
    assert nhs(8) not in keys and nhs(9) not in keys  # filters
    assert nhs(11) + ".0" in keys
    # Units: P01..P07, P10..P12 and 47 ordinary ones sharing 40 keys.
    linkable = [normalise(k) for k in keys if normalise(k) is not None]
    assert len(linkable) == len(set(linkable))


def test_several_keys_per_unit_follow_the_keyed_order(tmp_path: Path) -> None:
    """A unit with two keys gives one, the same one whatever the storage order, and
    under another node secret possibly the other one: the keyed order decides."""
    rows = police_rows()
    shuffled = copy.deepcopy(rows)
    random.Random(4).shuffle(shuffled)
    got = run(tmp_path, template(), 0, {"incidents": rows})
    assert run(tmp_path, template(), 0, {"incidents": shuffled}) == got
    picks = set()
    for i in range(12):
        key = bytes([i]) * 32
        out = run(tmp_path, template(), 0, {"incidents": rows}, order_key=key)
        assert out == police_reference(tmp_path, rows, key)
        picks |= {k for k, _ in out if k in (nhs(3), nhs(4))}
    assert picks == {nhs(3), nhs(4)}


def test_values_are_bound_never_in_the_sql() -> None:
    t = template()
    sql, params = members_sql(t, values(t), 0, exclude_opted_out=True, order_key=ORDER_KEY)
    assert "DOMESTIC_ABUSE_NOTIFICATION" in params and date(2025, 4, 1) in params
    assert "DOMESTIC" not in sql and "2025" not in sql
    assert '"incidents"' not in sql and "incidents" in sql  # the schema's own source SQL
    sql1, _ = members_sql(t, values(t), 1, exclude_opted_out=True, order_key=ORDER_KEY)
    assert "2026" not in sql1
    with pytest.raises(ValueError):
        members_sql(t, values(t), 2, exclude_opted_out=True, order_key=ORDER_KEY)


# --- cin (the categories party) -------------------------------------------------------


def cin_rows() -> list[dict[str, Any]]:
    dobs: list[date | None] = [
        date(2025, 12, 1),  # under 1
        date(2022, 3, 31),  # 4 on the day: 1-4
        date(2022, 4, 1),  # 3
        date(2016, 1, 1),  # 10: 10-15
        date(2019, 5, 5),  # 6: 5-9
        date(2008, 1, 1),  # 18: 16 and over
        None,  # Age not recorded
        date(2028, 6, 1),  # born after the day (age -2): outside every band, left out
    ]
    rows = []
    for i in range(40):
        key: str | None = nhs(200 + i)
        if i % 7 == 3:
            key = None
        elif i % 11 == 5:
            key = invalid(200 + i)
        elif i % 13 == 6:
            key = nhs(200)  # the same child as unit 0
        rows.append(
            {
                "child_id": f"C{i:03d}",
                "dob": dobs[i % len(dobs)],
                "sex": "1",
                "nhs_number": key,
            }
        )
    return rows


def _age(dob: Any) -> int | None:
    if dob is None or pd.isna(dob):
        return None
    if dob > ON:  # DuckDB's date_sub counts whole years, towards zero
        return -(dob.year - ON.year - ((dob.month, dob.day) < (ON.month, ON.day)))
    return ON.year - dob.year - ((ON.month, ON.day) < (dob.month, dob.day))


def _bracket(age: int | None) -> int | None:
    if age is None:
        return 5
    for i, (lo, hi) in enumerate(((0, 0), (1, 4), (5, 9), (10, 15), (16, 120))):
        if lo <= age <= hi:
            return i
    return None


def test_categories_party_matches_brute_force(tmp_path: Path) -> None:
    rows = cin_rows()
    got = run(tmp_path, template(), 1, {"children": rows})
    frame = hashed_frame(tmp_path, "cin", "children", {"children": rows})
    cells = frame["dob"].map(lambda d: _bracket(_age(d)))
    assert got == brute_force(frame, "child_id", cells)
    assert {c for _, c in got} == {0, 1, 2, 3, 4, 5}  # unknown included
    assert len(got) < 40  # born after the day (5 units) and duplicated keys left out


def test_choose_latest_decides_the_cell(tmp_path: Path) -> None:
    """Categories from police by incident type, the latest record deciding."""
    d = to_dict(template())
    d["statistic"] = {
        "kind": "overlap_count",
        "match": "all",
        "categories_from": "police",
        "choose": "latest",
        "by": "incident_date",
    }
    d["group_by"] = [
        {
            "name": "incident",
            "kind": "categories",
            "column": "incident_type",
            "categories": [
                {"label": "DA", "codes": ["DOMESTIC_ABUSE_NOTIFICATION"]},
                {"label": "Missing", "codes": ["MISSING_EPISODE"]},
            ],
        }
    ]
    d["overlap"]["datasets"][0]["filters"] = d["overlap"]["datasets"][0]["filters"][1:]
    del d["parameters"]["on_date"]
    t = parse(d)
    rows = []
    for i in range(30):
        for j, kind in enumerate(
            ["DOMESTIC_ABUSE_NOTIFICATION", "MISSING_EPISODE", "YOUTH_OFFENCE"][: 1 + i % 3]
        ):
            day = date(2025, 5 + (i * 3 + j * 5) % 7, 1 + i % 20)
            rows.append(
                {
                    "person_id": f"P{i}",
                    "nhs_number": nhs(300 + i),
                    "incident_date": day,
                    "incident_type": kind,
                }
            )
    got = run(tmp_path, t, 0, {"incidents": rows})
    frame = pd.DataFrame(rows)
    want = {}
    for pid, g in frame.groupby("person_id"):
        g = g[g["incident_type"] != "YOUTH_OFFENCE"]  # outside the domain
        latest = g.sort_values("incident_date").iloc[-1]
        want[latest["nhs_number"]] = 0 if latest["incident_type"].startswith("DOM") else 1
    assert dict(got) == want and len(got) == 30


# --- health: opt-out per person ---------------------------------------------------------


def health_rows() -> list[dict[str, Any]]:
    base = {"age_years": 3, "attendance_category": "1", "injury": True}
    return [
        {**base, "nhs_number": nhs(1), "arrival_date": date(2025, 5, 1), "opted_out": False},
        # One opted-out record leaves the person out entirely, even outside the period.
        {**base, "nhs_number": nhs(2), "arrival_date": date(2025, 5, 1), "opted_out": False},
        {**base, "nhs_number": nhs(2), "arrival_date": date(2019, 5, 1), "opted_out": True},
        # So does an unknown opt-out status.
        {**base, "nhs_number": nhs(3), "arrival_date": date(2025, 5, 1), "opted_out": None},
        {**base, "nhs_number": invalid(4), "arrival_date": date(2025, 6, 1), "opted_out": False},
        # The unit is the NHS number as recorded: these two spellings are two units
        # at the node, one child for the overlap.
        {**base, "nhs_number": nhs(5), "arrival_date": date(2025, 6, 1), "opted_out": False},
        {
            **base,
            "nhs_number": nhs(5)[:3] + "-" + nhs(5)[3:],
            "arrival_date": date(2025, 7, 1),
            "opted_out": False,
        },
        {**base, "nhs_number": None, "arrival_date": date(2025, 6, 1), "opted_out": False},
    ]


@pytest.mark.parametrize("exclude", [True, False])
def test_health_opt_out_is_per_person(tmp_path: Path, exclude: bool) -> None:
    t = template(THREE)
    got = run(tmp_path, t, 0, {"ed_attendances": health_rows()}, exclude=exclude)
    keys = {normalise(k) if normalise(k) else k for k, _ in got}
    want = {nhs(1), invalid(4), nhs(5)} | ({nhs(2), nhs(3)} if not exclude else set())
    assert keys == want and len(got) == len(want)
    frame = hashed_frame(tmp_path, "health", "ed_attendances", {"ed_attendances": health_rows()})
    in_period = frame["arrival_date"].between(date(2025, 4, 1), date(2026, 3, 31))
    if exclude:
        out = frame.groupby("nhs_number")["opted_out"].transform(lambda s: s.isna().any() | s.any())
        in_period &= ~out.fillna(True).astype(bool)
    assert got == brute_force(frame, "nhs_number", in_period.map({True: 0, False: None}))


# --- through the protocol -------------------------------------------------------------


def test_members_feed_the_protocol_one_element_per_child(tmp_path: Path) -> None:
    t = template()
    police = run(tmp_path, t, 0, {"incidents": police_rows()})
    cin = [
        {"child_id": "C1", "dob": date(2020, 1, 1), "sex": "2", "nhs_number": nhs(1)},
        {"child_id": "C2", "dob": date(2020, 1, 1), "sex": "2", "nhs_number": nhs(6)},
        {"child_id": "C3", "dob": date(2025, 1, 1), "sex": "2", "nhs_number": nhs(6)},
        {"child_id": "C4", "dob": date(2012, 1, 1), "sex": "1", "nhs_number": nhs(2)},
        {"child_id": "C5", "dob": date(2012, 1, 1), "sex": "1", "nhs_number": None},
    ]
    care = run(tmp_path, t, 1, {"children": cin})
    q = dataclasses.replace(overlap_query(t, values(t), os.urandom(16), None), min_count=0)
    inputs: Sequence[list[tuple[str | None, int]]] = (police, care)
    result = run_local([Party(q, i, rows) for i, rows in enumerate(inputs)], Counter(q))
    by_label = {c.label: c.value for c in result.cells}
    # nhs(6) is one child at police (two spellings) and at social care (two units).
    # C2 or C3 (the keyed order decides) is nhs(6)'s one element at social care.
    assert by_label["10-15"] == 1 and by_label["1-4"] + by_label["5-9"] == 2  # type: ignore[operator]
    assert sum(v or 0 for v in by_label.values()) == 3
    assert result.not_linkable["cin"] == (0, 0, 0, 1, 0, 0)
    assert result.not_linkable["police"] == (sum(normalise(k) is None for k, _ in police),)


def test_the_compiler_refuses_an_overlap_template() -> None:
    t = template()
    with pytest.raises(ValueError, match="overlap"):
        compiler.compile_query(t, values(t), exclude_opted_out=True, order_key=ORDER_KEY)
    with pytest.raises(ValueError, match="not an overlap"):
        members_sql(
            load_toml(
                (REPO / "examples" / "templates" / "police-incidents-by-type.toml").read_text()
            ),
            {},
            0,
            exclude_opted_out=True,
            order_key=ORDER_KEY,
        )
