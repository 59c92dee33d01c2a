"""The messy SSDA903 form: what it adds, that its truth is recoverable, and that
the same seed gives the same files; and the messy form's CIN gaps."""

from __future__ import annotations

import filecmp
from collections import Counter
from datetime import date
from pathlib import Path

from tessera.synth import generate_region
from tessera.synth.census import census_flat_csv, census_xml
from tessera.synth.messy import EPISODE_COLUMNS, HEADER_COLUMNS, YEAR, format_date, stacked_returns
from tessera.synth.rng import make_rng
from tessera.synth.writer import Tables
from tests.unit.synth.conftest import REF, SEED, Region, read_csv


def _clean(region: Region, council: str) -> Tables:
    out: Tables = {}
    for name in ("header", "episodes"):
        names, rows = read_csv(region.root / council / "ssda903" / f"{name}.csv")
        out[name] = {k: [r[k] for r in rows] for k in names}
    return out


def test_messy_form_has_every_kind_of_mess(region: Region) -> None:
    clean = _clean(region, "leeds")
    messy, truth = stacked_returns(make_rng(SEED, "messy/leeds"), clean, REF)
    assert list(messy["header"]) == [*HEADER_COLUMNS, YEAR]
    assert list(messy["episodes"]) == [*EPISODE_COLUMNS, YEAR]
    assert len(set(messy["episodes"][YEAR])) >= 3  # stacked returns
    per_child = Counter(messy["header"]["CHILD"])
    assert max(per_child.values()) >= 2  # repeated headers
    assert set(truth["episodes"]["CHILD"]) - set(messy["header"]["CHILD"])  # missing headers
    forms = {("-" in d, "/" in d, len(d)) for d in messy["episodes"]["DECOM"] if d}
    assert {(True, False, 10), (False, True, 10), (False, True, 8), (False, False, 5)} <= forms
    assert any(v.endswith(".0") for v in messy["header"]["SEX"])
    assert any(v != v.strip() or v != v.upper() for v in messy["episodes"]["PLACE"])
    # Every episode of the truth is in some return, and nothing else is.
    keys = set(zip(truth["episodes"]["CHILD"], truth["episodes"]["DECOM"], strict=True))
    assert len(keys) == len(truth["episodes"]["CHILD"])


def test_dates_format_in_every_form() -> None:
    d = date(2020, 1, 1)
    assert [format_date(d, f) for f in range(4)] == [
        "2020-01-01",
        "01/01/2020",
        "01/01/20",
        "43831",
    ]
    assert format_date(None, 2) == ""


def test_messy_region_is_reproducible(tmp_path: Path) -> None:
    a = generate_region(tmp_path / "a", scale=0.005, seed=SEED, reference_date=REF, messy=True)
    generate_region(tmp_path / "b", scale=0.005, seed=SEED, reference_date=REF, messy=True)
    for org in a.organisations:
        for ds in org.datasets:
            for f in ds.tables.values():
                assert filecmp.cmp(tmp_path / "a" / f.path, tmp_path / "b" / f.path, shallow=False)
    names, _ = read_csv(tmp_path / "a" / a.organisations[0].datasets[0].tables["episodes"].path)
    assert names[-1] == YEAR
    # The CIN gaps (tessera.synth.messy_cin): children with referrals but no children
    # row, and NFA referrals with no primary need, never a referral that opened an episode.
    orphans = blank = 0
    for org in a.organisations:
        for ds in org.datasets:
            if ds.name == "cin":
                _, kids = read_csv(tmp_path / "a" / ds.tables["children"].path)
                _, refs = read_csv(tmp_path / "a" / ds.tables["referrals"].path)
                orphans += len({r["child_id"] for r in refs} - {k["child_id"] for k in kids})
                blank += sum(r["primary_need"] == "" for r in refs)
                assert all(r["nfa"] == "true" for r in refs if r["primary_need"] == "")
    assert orphans > 0 and blank > 0


def test_clean_cin_has_no_gaps(region: Region) -> None:
    _, kids = read_csv(region.root / "leeds" / "cin" / "children.csv")
    _, refs = read_csv(region.root / "leeds" / "cin" / "referrals.csv")
    assert {r["child_id"] for r in refs} <= {k["child_id"] for k in kids}
    assert all(r["primary_need"] for r in refs)


def test_census_forms_hold_every_referral(region: Region) -> None:
    cin: Tables = {}
    for name in ("children", "referrals", "cin_episodes", "cp_plans"):
        names, rows = read_csv(region.root / "leeds" / "cin" / f"{name}.csv")
        cin[name] = {k: [r[k] for r in rows] for k in names}
    xml = census_xml(cin, 2026)
    assert xml.count("<CINdetails>") == len(cin["referrals"]["child_id"])
    assert xml.count("<Child>") == len(cin["children"]["child_id"])
    flat = census_flat_csv(cin).splitlines()
    assert flat[0].startswith("LAchildID,UPN,PersonBirthDate")
    assert len(flat) - 1 >= len(cin["referrals"]["child_id"])
