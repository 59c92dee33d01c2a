"""Real-shaped statutory returns give true numbers, end to end.

A synthetic council's clean SSDA903 tables are turned into the messy extract
councils really hold (tessera.synth.messy: four stacked yearly returns, repeated
and missing headers, conflicting header copies, overlapping episodes, duplicate
rows, spreadsheet values, four date formats), ingested by the real pipeline into
a sealed version, opened through the catalog as the node does, and queried with
the compiler's pre-noise path. Every figure must equal an independent pandas
computation on the *truth* the messy writer returns (never on ingest's output):
stock by age and placement on 12 dates over three years, episode starts in a
period, and, from a DfE CIN census XML file and its flat CSV export, referrals by
need and age and children in need by primary need.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from tessera.node import compiler
from tessera.node.catalog import DatasetCatalog
from tessera.node.ingest import IngestError, ingest_dataset
from tessera.schemas import DATASETS
from tessera.synth import generate_region
from tessera.synth.census import census_flat_csv, census_xml
from tessera.synth.messy import YEAR, stacked_returns
from tessera.synth.messy_cin import CinGaps, cin_gaps
from tessera.synth.rng import make_rng
from tessera.synth.writer import Tables, write_rows
from tessera.templates import bind, load_toml
from tessera.templates.model import BandsDim, CategoriesDim, Template

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "templates"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
REFERENCE = date(2026, 3, 31)
ORDER_KEY = bytes(range(32))
SEED = 11
COUNCIL = "leeds"
STOCK_DATES = [
    date(2023, 4, 30),
    date(2023, 7, 31),
    date(2023, 10, 10),
    date(2024, 1, 15),
    date(2024, 3, 31),
    date(2024, 7, 4),
    date(2024, 11, 30),
    date(2025, 2, 28),
    date(2025, 3, 31),
    date(2025, 8, 1),
    date(2025, 12, 24),
    date(2026, 3, 31),
]


def _read(path: Path) -> dict[str, list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = list(rows[0]) if rows else []
    return {k: [r[k] for r in rows] for k in names}


@dataclass
class World:
    root: Path
    clean: dict[str, Tables]  # dataset -> clean tables (the council's own truth)
    messy: Tables
    truth: Tables


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("returns")
    manifest = generate_region(root / "region", scale=0.15, seed=SEED, reference_date=REFERENCE)
    assert manifest.organisation(COUNCIL).kind == "council"
    clean: dict[str, Tables] = {}
    for ds in ("ssda903", "cin"):
        clean[ds] = {
            t.name: _read(root / "region" / COUNCIL / ds / f"{t.name}.csv")
            for t in DATASETS[ds].tables
        }
    messy, truth = stacked_returns(make_rng(SEED, f"messy/{COUNCIL}"), clean["ssda903"], REFERENCE)
    return World(root, clean, messy, truth)


def _w(path: Path, columns: dict[str, list[str]]) -> Path:
    write_rows(path, columns)
    return path


def _write_messy(world: World, folder: Path) -> dict[str, list[Path]]:
    return {name: [_w(folder / f"{name}.csv", cols)] for name, cols in world.messy.items()}


def _per_year(world: World, folder: Path) -> dict[str, list[Path]]:
    """The same extract as one file per return, oldest first, without a YEAR column."""
    out: dict[str, list[Path]] = {}
    for name, cols in world.messy.items():
        years = sorted(set(cols[YEAR]))
        for y in years:
            keep = [i for i, v in enumerate(cols[YEAR]) if v == y]
            part = {k: [v[i] for i in keep] for k, v in cols.items() if k != YEAR}
            path = folder / f"{name}-{y}.csv"
            write_rows(path, part)
            out.setdefault(name, []).append(path)
    return out


@pytest.fixture(scope="module")
def ingested(world: World) -> Iterator[tuple[DatasetCatalog, object]]:
    data = world.root / "data"
    files = _write_messy(world, world.root / "messy")
    report = ingest_dataset(DATASETS["ssda903"], files, data, NOW)
    assert report.outcome == "written", report.render()
    catalog = DatasetCatalog(data)
    version = catalog.latest("ssda903")
    assert version is not None
    yield catalog, version
    catalog.close()


KEY_ID = "ed25519:" + "0" * 64
NEED_GAPS = CinGaps(missing_child=0.0)  # the messy CIN form's need gaps, every child row kept


def _toml(text: str) -> Template:
    return load_toml(text.replace("ed25519:KEY", KEY_ID))


def _template(name: str, edits: Mapping[str, str] | None = None) -> Template:
    text = (EXAMPLES / f"{name}.toml").read_text()
    for old, new in (edits or {}).items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return load_toml(text)


def _stock_template(*, unknown: bool) -> Template:
    """The reference template, with the semantics the lead settled on: a child's cell
    is its latest-starting open episode's (added here if the example lacks it); with
    ``unknown``, children without a DOB fall in the age dimension's unknown cell,
    without it they are excluded (the line is added or removed as needed)."""
    text = (EXAMPLES / "cla-by-age-and-placement.toml").read_text()
    edits: dict[str, str] = {}
    if 'choose = "latest"' not in text:
        edits["max_cells_per_unit = 1"] = 'max_cells_per_unit = 1\nchoose = "latest"\nby = "DECOM"'
    age = text.split("[[group_by]]")[1]
    declared = re.search(r'^unknown = "[^"]*"\n', age, re.MULTILINE)
    if unknown and declared is None:
        edits['birth_column = "DOB"'] = 'birth_column = "DOB"\nunknown = "Age unknown"'
    if not unknown and declared is not None:
        edits[declared[0]] = ""
    t = _template("cla-by-age-and-placement", edits)
    age_dim = t.group_by[0]
    assert isinstance(age_dim, BandsDim) and (age_dim.unknown is not None) == unknown
    return t


def _run(catalog: DatasetCatalog, version: object, t: Template, raw: dict[str, str]) -> dict:
    query = compiler.compile_query(t, bind(t, raw), exclude_opted_out=True, order_key=ORDER_KEY)
    cursor = catalog.connect(version).cursor()  # type: ignore[arg-type]
    try:
        vector = compiler.run(cursor, query)["count"]
    finally:
        cursor.close()
    return _by_label(t, [int(x) for x in vector])


def _by_label(t: Template, vector: list[int]) -> dict[tuple[str, ...], int]:
    labels = [d.labels for d in t.group_by]
    out: dict[tuple[str, ...], int] = {}
    for flat, n in enumerate(vector):
        key: list[str] = []
        rest = flat
        for dim in reversed(labels):
            key.append(dim[rest % len(dim)])
            rest //= len(dim)
        if n:
            out[tuple(reversed(key))] = n
    return out


# ---- the independent pandas side -------------------------------------------------


def _age(dob: pd.Timestamp, on: date) -> int:
    """Completed years on ``on`` (a 29 February birthday falls on 28 February)."""
    bday = (dob.month, dob.day)
    if bday == (2, 29) and not pd.Timestamp(on).is_leap_year:
        bday = (2, 28)
    return on.year - dob.year - ((on.month, on.day) < bday)


def _band(dim: BandsDim, age: int | None) -> str | None:
    if age is None:
        return dim.unknown
    for b in dim.bands:
        if b.min <= age <= b.max:
            return b.label
    return None


def _category(dim: CategoriesDim, code: str | None) -> str | None:
    if code is None or code == "":
        return dim.unknown if dim.unknown is not None else dim.other
    for c in dim.categories:
        if code in c.codes:
            return c.label
    return dim.other


def _frames(truth: Tables) -> tuple[pd.DataFrame, pd.DataFrame]:
    eps = pd.DataFrame(truth["episodes"])
    eps["DECOM"] = pd.to_datetime(eps["DECOM"])
    eps["DEC"] = pd.to_datetime(eps["DEC"].replace("", None))
    hdr = pd.DataFrame(truth["header"])
    hdr["DOB"] = pd.to_datetime(hdr["DOB"])
    return eps, hdr


def expected_stock(truth: Tables, t: Template, on: date) -> dict[tuple[str, ...], int]:
    eps, hdr = _frames(truth)
    ts = pd.Timestamp(on)
    active = eps[(eps["DECOM"] <= ts) & (eps["DEC"].isna() | (eps["DEC"] > ts))]
    latest = active.sort_values("DECOM").groupby("CHILD").tail(1)
    rows = latest.merge(hdr[["CHILD", "DOB"]], on="CHILD", how="left")
    age_dim, place_dim = t.group_by
    assert isinstance(age_dim, BandsDim) and isinstance(place_dim, CategoriesDim)
    out: Counter[tuple[str, ...]] = Counter()
    for dob, place in zip(rows["DOB"], rows["PLACE"], strict=True):
        age = None if pd.isna(dob) else _age(dob, on)
        a, p = _band(age_dim, age), _category(place_dim, place)
        if a is not None and p is not None:
            out[(a, p)] += 1
    return dict(out)


# ---- the tests -------------------------------------------------------------------


def test_the_messy_extract_really_is_messy(world: World) -> None:
    m, truth = world.messy, world.truth
    children = set(truth["episodes"]["CHILD"])
    assert len(set(m["episodes"][YEAR])) == 4
    assert len(m["episodes"]["CHILD"]) > 1.3 * len(truth["episodes"]["CHILD"])  # stacked
    assert len(m["header"]["CHILD"]) > 1.5 * len(set(m["header"]["CHILD"]))  # repeated
    assert children - set(m["header"]["CHILD"])  # children without a header
    dates = m["episodes"]["DECOM"]
    assert any("-" in d for d in dates) and any("/" in d and len(d) == 8 for d in dates)
    assert any(d.isdigit() for d in dates) and any("/" in d and len(d) == 10 for d in dates)
    assert any(v.endswith(".0") for v in m["header"]["SEX"])
    eps, _ = _frames(truth)
    eps = eps.sort_values(["CHILD", "DECOM"])
    prev_end = eps.groupby("CHILD")["DEC"].shift(1)
    assert ((eps["DECOM"] < prev_end) & prev_end.notna()).any()  # overlapping episodes


def test_reconciled_content_equals_the_truth(world: World, ingested: tuple) -> None:
    catalog, version = ingested
    con = catalog.connect(version).cursor()
    try:
        got = con.execute(
            "SELECT CHILD, CAST(DECOM AS VARCHAR), coalesce(CAST(DEC AS VARCHAR), ''), "
            "LS, PLACE, coalesce(REC, '') FROM episodes ORDER BY 1, 2"
        ).fetchall()
        header = con.execute(
            "SELECT CHILD, SEX, CAST(DOB AS VARCHAR), coalesce(MOTHER, '') FROM header ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    e = world.truth["episodes"]
    want = sorted(zip(e["CHILD"], e["DECOM"], e["DEC"], e["LS"], e["PLACE"], e["REC"], strict=True))
    assert got == want
    h = world.truth["header"]
    assert header == sorted(zip(h["CHILD"], h["SEX"], h["DOB"], h["MOTHER"], strict=True))


def test_stock_by_age_and_placement_on_twelve_dates(world: World, ingested: tuple) -> None:
    catalog, version = ingested
    for unknown in (False, True):
        t = _stock_template(unknown=unknown)
        for on in STOCK_DATES:
            got = _run(catalog, version, t, {"on_date": on.isoformat()})
            assert got == expected_stock(world.truth, t, on), (unknown, on)
            assert sum(got.values()) > 0


def test_children_without_a_header_are_counted_in_the_manifest(
    world: World, ingested: tuple
) -> None:
    _, version = ingested
    no_header = set(world.truth["episodes"]["CHILD"]) - set(world.truth["header"]["CHILD"])
    assert no_header
    assert dict(version.children_without_header) == {"episodes": len(no_header)}  # type: ignore[attr-defined]


EPISODE_STARTS = """
id = "episode-starts-by-placement"
version = 1
title = "Episodes starting in a period, by placement category"
purpose = "service_planning"
description = "Episodes of care that started between two dates, by placement."
legal_basis = "Children Act 1989 s.22G"

[data]
dataset = "ssda903"
schema_version = 1
source = "episodes"
privacy_unit = "CHILD"

[parameters.period_start]
type = "date"
min = 2015-04-01
max = 2026-03-31
description = "First day."

[parameters.period_end]
type = "date"
min = 2015-04-01
max = 2026-03-31
description = "Last day."

[[filters]]
kind = "between"
column = "DECOM"
start = "period_start"
end = "period_end"

[[group_by]]
name = "placement"
kind = "categories"
column = "PLACE"
other = "Other"
categories = [
  { label = "Fostering", codes = ["U1", "U2", "U3", "U4", "U5", "U6"] },
  { label = "Residential", codes = ["K2", "R1", "P3", "S1"] },
]

[statistic]
kind = "count_records"
max_records_per_unit = 1000

[privacy]
rho = 0.125

[output]
min_count = 5
round_to = 1

[access]
analysts = [{ name = "A", key = "ed25519:KEY" }]
expires = 2027-12-31
quorum = 3
per_node_breakdown = false
"""


def test_episode_starts_in_a_period(world: World, ingested: tuple) -> None:
    catalog, version = ingested
    t = _toml(EPISODE_STARTS)
    eps, _ = _frames(world.truth)
    (dim,) = t.group_by
    assert isinstance(dim, CategoriesDim)
    for start, end in (
        (date(2022, 4, 1), date(2023, 3, 31)),
        (date(2019, 1, 1), date(2026, 3, 31)),
    ):
        sel = eps[(eps["DECOM"] >= pd.Timestamp(start)) & (eps["DECOM"] <= pd.Timestamp(end))]
        want = Counter((_category(dim, p),) for p in sel["PLACE"])
        got = _run(
            catalog, version, t, {"period_start": start.isoformat(), "period_end": end.isoformat()}
        )
        assert got == dict(want)
        assert sum(got.values()) > 0


def test_the_same_data_in_another_layout_is_the_same_version(
    world: World, ingested: tuple, tmp_path: Path
) -> None:
    """One file per year (file order instead of YEAR) reconciles to identical content."""
    _, version = ingested
    files = _per_year(world, tmp_path / "years")
    report = ingest_dataset(DATASETS["ssda903"], files, world.root / "data", NOW)
    assert (report.outcome, report.version) == ("unchanged", version.version)  # type: ignore[attr-defined]


CIN_NEED_ON_DATE = """
id = "children-in-need-by-need"
version = 1
title = "Children in need on a date, by primary need"
purpose = "service_planning"
description = "Children with an open in-need episode on a date, by its primary need."
legal_basis = "Children Act 1989 s.17"

[data]
dataset = "cin"
schema_version = 1
source = "cin_episodes"
privacy_unit = "child_id"

[parameters.on_date]
type = "date"
min = 2015-03-31
max = 2026-03-31
description = "The date."

[[filters]]
kind = "active_on"
start_column = "start_date"
end_column = "end_date"
on = "on_date"

[[group_by]]
name = "need"
kind = "categories"
column = "primary_need"
categories = [
  { label = "N1", codes = ["N1"] }, { label = "N2", codes = ["N2"] },
  { label = "N3", codes = ["N3"] }, { label = "N4", codes = ["N4"] },
  { label = "N5", codes = ["N5"] }, { label = "N6", codes = ["N6"] },
  { label = "N7", codes = ["N7"] }, { label = "N8", codes = ["N8"] },
  { label = "N9", codes = ["N9"] },
]

[statistic]
kind = "count_units"
max_cells_per_unit = 1
choose = "latest"
by = "start_date"

[privacy]
epsilon = 0.5

[output]
min_count = 5
round_to = 1

[access]
analysts = [{ name = "A", key = "ed25519:KEY" }]
expires = 2027-12-31
quorum = 3
per_node_breakdown = false
"""


def _cin_truth(clean: Tables) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Referrals, in-need episodes as the census defines them (every referral that
    was not 'no further action', to its closure date), and children."""
    ref = pd.DataFrame(clean["referrals"])
    epi = pd.DataFrame(clean["cin_episodes"])
    kids = pd.DataFrame(clean["children"])
    closure = {(c, s): e for c, s, e in zip(epi["child_id"], epi["start_date"], epi["end_date"])}
    episodes = pd.DataFrame(
        [
            {
                "child_id": c,
                "start_date": d,
                "end_date": closure.get((c, d), ""),
                "primary_need": n,
            }
            for c, d, n, nfa in zip(
                ref["child_id"], ref["referral_date"], ref["primary_need"], ref["nfa"]
            )
            if nfa != "true"
        ]
    )
    for frame, cols in ((ref, ["referral_date"]), (episodes, ["start_date", "end_date"])):
        for c in cols:
            frame[c] = pd.to_datetime(frame[c].replace("", None))
    kids["dob"] = pd.to_datetime(kids["dob"])
    return ref, episodes, kids


def _expected_referrals(
    t: Template, ref: pd.DataFrame, kids: pd.DataFrame, start: date, end: date
) -> Counter[tuple[str, ...]]:
    """Reference template 2 by brute force: referrals in [start, end] by need and age
    at referral, a missing need or a child with no children row (no DOB) in the
    template's "not recorded" cells."""
    need_dim, age_dim = t.group_by
    assert isinstance(need_dim, CategoriesDim) and isinstance(age_dim, BandsDim)
    sel = ref[
        (ref["referral_date"] >= pd.Timestamp(start)) & (ref["referral_date"] <= pd.Timestamp(end))
    ]
    sel = sel.merge(kids[["child_id", "dob"]], on="child_id", how="left")
    rows = []
    for c, n, when, dob in zip(
        sel["child_id"], sel["primary_need"], sel["referral_date"], sel["dob"]
    ):
        a = _band(age_dim, None if pd.isna(dob) else _age(dob, when.date()))
        lab = _category(need_dim, n)
        if a is not None and lab is not None:
            rows.append((c, lab, a))
    # No child has more referrals than the cap in this period, so the comparison
    # is exact whichever records the keyed order would keep.
    cap = t.statistic.max_records_per_unit
    assert cap is not None and max(Counter(c for c, _, _ in rows).values()) <= cap
    return Counter((lab, a) for _, lab, a in rows)


def _check_referrals(
    catalog: DatasetCatalog, version: object, ref: pd.DataFrame, kids: pd.DataFrame
) -> Counter[tuple[str, ...]]:
    """The reference template's pre-noise answer equals the brute force; returns it."""
    t = _template("referrals-by-need-and-age")
    start, end = date(2025, 4, 1), date(2026, 3, 31)
    want = _expected_referrals(t, ref, kids, start, end)
    got = _run(
        catalog, version, t, {"period_start": start.isoformat(), "period_end": end.isoformat()}
    )
    assert got == dict(want)
    assert sum(got.values()) > 0
    return want


def _not_recorded(counts: Mapping[tuple[str, ...], int]) -> tuple[int, int]:
    """Referrals counted under (no need recorded, no age recorded)."""
    need = sum(n for (lab, _), n in counts.items() if lab == "Need not recorded")
    age = sum(n for (_, a), n in counts.items() if a == "Age not recorded")
    return need, age


@pytest.mark.parametrize("form", ["xml", "flat"])
def test_cin_census_gives_true_numbers(world: World, tmp_path: Path, form: str) -> None:
    # A census Child always carries its identifiers, so only the need gap applies.
    clean = cin_gaps(make_rng(SEED, f"messy-cin/{COUNCIL}"), world.clean["cin"], NEED_GAPS)
    if form == "xml":
        path = tmp_path / "census.xml"
        path.write_text(census_xml(clean, 2026), encoding="utf-8")
    else:
        path = tmp_path / "census.csv"
        path.write_text(census_flat_csv(clean), encoding="utf-8")
    data = tmp_path / "data"
    report = ingest_dataset(DATASETS["cin"], {"census": [path]}, data, NOW)
    assert report.outcome == "written", report.render()
    assert report.rows_rejected == 0
    ref, episodes, kids = _cin_truth(clean)
    with DatasetCatalog(data) as catalog:
        version = catalog.latest("cin")
        assert version is not None
        # Children in need on a date, by primary need.
        t = _toml(CIN_NEED_ON_DATE)
        (dim,) = t.group_by
        assert isinstance(dim, CategoriesDim)
        for on in (date(2023, 3, 31), date(2024, 11, 1), date(2026, 3, 31)):
            ts = pd.Timestamp(on)
            act = episodes[
                (episodes["start_date"] <= ts)
                & (episodes["end_date"].isna() | (episodes["end_date"] > ts))
            ]
            latest = act.sort_values("start_date").groupby("child_id").tail(1)
            want = Counter(
                (lab,) for n in latest["primary_need"] if (lab := _category(dim, n)) is not None
            )
            got = _run(catalog, version, t, {"on_date": on.isoformat()})
            assert got == dict(want), on
            assert sum(got.values()) > 0
        # Referrals in a period, by need and age (the reference template), the NFA
        # referrals without a need recorded in "Need not recorded".
        counted = _check_referrals(catalog, version, ref, kids)
        assert _not_recorded(counted)[0] > 0


def test_cin_gaps_are_counted_not_dropped(world: World, tmp_path: Path) -> None:
    """The messy CIN files (tessera.synth.messy_cin, as `tessera synth --messy` writes
    them): children with referrals but no children row, and NFA referrals with no
    primary need. Reference template 2 counts every such referral in its "not
    recorded" cells, and its pre-noise answer equals a brute force on the files."""
    messy = cin_gaps(make_rng(SEED, f"messy-cin/{COUNCIL}"), world.clean["cin"])
    files = {name: [_w(tmp_path / "cin" / f"{name}.csv", cols)] for name, cols in messy.items()}
    data = tmp_path / "data"
    report = ingest_dataset(DATASETS["cin"], files, data, NOW)
    assert report.outcome == "written", report.render()
    assert report.rows_rejected == 0
    ref, _, kids = _cin_truth(messy)
    orphans = set(ref["child_id"]) - set(kids["child_id"])
    assert orphans and (ref["primary_need"] == "").any()  # the files have both gaps
    with DatasetCatalog(data) as catalog:
        version = catalog.latest("cin")
        assert version is not None
        assert dict(version.children_without_header)["referrals"] == len(orphans)  # type: ignore[attr-defined]
        counted = _check_referrals(catalog, version, ref, kids)
    no_need, no_age = _not_recorded(counted)
    assert no_need > 0 and no_age > 0
    # Every referral in the period is counted somewhere: none had an age outside
    # every band, so the total is the number of referrals (each child is under the cap).
    in_period = ref[
        (ref["referral_date"] >= pd.Timestamp(2025, 4, 1))
        & (ref["referral_date"] <= pd.Timestamp(2026, 3, 31))
    ]
    assert sum(counted.values()) == len(in_period)


def test_dates_in_every_format_ingest_to_identical_content(world: World, tmp_path: Path) -> None:
    """The same extract with every date written in one form (ISO, DD/MM/YYYY,
    DD/MM/YY, Excel serial) ingests to one content hash."""
    from tessera.synth.messy import format_date

    hashes = set()
    for form in range(4):
        folder = tmp_path / f"form{form}"
        files: dict[str, list[Path]] = {}
        for name, cols in world.messy.items():
            out = dict(cols)
            for k in ("DOB", "MC_DOB", "DECOM", "DEC"):
                if k in out:
                    out[k] = [format_date(None if not v else _any_date(v), form) for v in cols[k]]
            path = folder / f"{name}.csv"
            write_rows(path, out)
            files[name] = [path]
        report = ingest_dataset(
            DATASETS["ssda903"], files, tmp_path / f"data{form}", NOW, dry_run=True
        )
        assert report.outcome == "dry run"
        hashes.add(report.content_sha256)
    assert len(hashes) == 1


def _any_date(text: str) -> date:
    from tessera.node.ingest.dates import parse_date

    d = parse_date(text, NOW.year)
    assert d is not None
    return d


def test_all_refused_and_over_threshold_exit_non_zero_and_publish_nothing(
    world: World, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    e = {k: list(v) for k, v in world.messy["episodes"].items()}
    h = world.messy["header"]
    # Every episode refused: an unknown placement code everywhere.
    all_bad = dict(e)
    all_bad["PLACE"] = ["ZZ"] * len(e["PLACE"])
    hdr_none = {k: [] for k in h}
    paths = {
        "header": [_w(tmp_path / "h.csv", hdr_none)],
        "episodes": [_w(tmp_path / "e.csv", all_bad)],
    }
    with pytest.raises(IngestError) as info:
        ingest_dataset(DATASETS["ssda903"], paths, data, NOW)
    assert info.value.report is not None and info.value.report.outcome == "refused"
    assert "no usable row remains" in info.value.report.render()
    # 10% of episodes refused: over the default 5% threshold.
    some_bad = dict(e)
    n = len(e["PLACE"])
    some_bad["PLACE"] = ["ZZ" if i % 10 == 0 else p for i, p in enumerate(e["PLACE"])]
    write_rows(tmp_path / "e2.csv", some_bad)
    write_rows(tmp_path / "h2.csv", h)
    paths2 = {"header": [tmp_path / "h2.csv"], "episodes": [tmp_path / "e2.csv"]}
    with pytest.raises(IngestError) as info:
        ingest_dataset(DATASETS["ssda903"], paths2, data, NOW)
    report = info.value.report
    assert report is not None
    assert "over the threshold" in report.render() and n > 0
    impact = {r.table: r for r in report.refusal_impact}
    assert impact["episodes"].rows == len(range(0, n, 10))
    assert not (data / "ssda903").exists() or not [
        p for p in os.listdir(data / "ssda903") if p.startswith("v")
    ]
    # Raising the threshold lets the same files through.
    ok = ingest_dataset(DATASETS["ssda903"], paths2, data, NOW, max_refused_share=0.5)
    assert ok.outcome == "written"
