"""Issue 13's acceptance test: on the synthetic region, the overlap counts for
reference template 5 and the three-agency "at least 2 of 3" template, with noise off
(the test-only path), are exact against a brute-force pandas join on the generator's
files.

The police, health and one council's cin files are ingested as nodes ingest them,
into real data folders; each party's units come from node.overlap_source.members on
the published DuckDB version; the protocol runs in one process (run_local). The
brute force reads the CSV files the generator wrote: it applies the same filters,
normalises each key and drops invalid (modulus-11) ones into "not linkable",
dedupes per agency (one child, one element), and intersects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tessera import schemas
from tessera.node.catalog import DatasetCatalog
from tessera.node.ingest import ingest_dataset
from tessera.node.overlap_source import members
from tessera.overlap.nhs import normalise
from tessera.overlap.protocol import Counter, OverlapResult, Party, run_local
from tessera.overlap.spec import overlap_query
from tessera.synth import calibration as cal
from tessera.synth import generate_region
from tessera.synth.manifest import RegionManifest
from tessera.templates import Template, bind, load_toml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "templates"
ORDER_KEY = os.urandom(32)
COUNCIL = cal.COUNCILS[0].slug
BANDS = ((0, 0), (1, 4), (5, 9), (10, 15), (16, 120))
WHOLE = {"period_start": "2020-01-01", "period_end": "2026-12-31", "on_date": "2026-03-31"}
A_YEAR = {"period_start": "2025-04-01", "period_end": "2026-03-31", "on_date": "2025-09-30"}


class Region:
    def __init__(self, root: Path, manifest: RegionManifest, data: dict[str, Path]) -> None:
        self.root, self.manifest, self.data = root, manifest, data

    def csv(self, org: str, dataset: str, table: str) -> pd.DataFrame:
        f = self.manifest.organisation(org).dataset(dataset).tables[table]
        return pd.read_csv(self.root / f.path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    root = tmp_path_factory.mktemp("region")
    manifest = generate_region(root / "files", scale=0.05, seed=11)
    data: dict[str, Path] = {}
    for org, name in (
        (cal.POLICE_SLUG, "police"),
        (cal.TRUST_SLUG, "health"),
        (COUNCIL, "cin"),
    ):
        ds = schemas.dataset(name)
        assert ds is not None
        tables = manifest.organisation(org).dataset(name).tables
        files = {t: [root / "files" / f.path] for t, f in tables.items()}
        data[name] = root / "nodes" / name
        ingest_dataset(ds, files, data[name], datetime.now(UTC))
    yield Region(root / "files", manifest, data)


def _members(region: Region, t: Template, values: dict[str, Any], party: int) -> list[Any]:
    assert t.overlap is not None
    name = t.overlap.datasets[party].dataset
    with DatasetCatalog(region.data[name]) as catalog:
        version = catalog.latest(name)
        assert version is not None
        cursor = catalog.connect(version).cursor()
        try:
            return members(
                cursor,
                t,
                values,
                party,
                exclude_opted_out=t.purpose != schemas.DIRECT_CARE,
                order_key=ORDER_KEY,
            )
        finally:
            cursor.close()


def _run(region: Region, name: str, raw: dict[str, str]) -> tuple[Template, OverlapResult]:
    t = load_toml((EXAMPLES / f"{name}.toml").read_text(encoding="utf-8"))
    assert t.overlap is not None
    values = bind(t, raw)
    # Noise off (the test-only path); no suppression, so every exact count is compared.
    q = overlap_query(t, values, os.urandom(16), None)
    q = type(q)(**{**q.__dict__, "min_count": 0})
    inputs = [_members(region, t, values, i) for i in range(len(t.overlap.datasets))]
    parties = [Party(q, i, rows) for i, rows in enumerate(inputs)]
    result = run_local(parties, Counter(q))
    assert result.exact and result.epsilon is None
    return t, result


# --- the brute force, from the generator's files ---------------------------------------


def _day(s: str) -> date:
    return date.fromisoformat(s)


def _age(dob: date, on: date) -> int:
    """Whole years from dob to on, towards zero (DuckDB's date_sub, as the node uses)."""
    if dob <= on:
        return on.year - dob.year - ((on.month, on.day) < (dob.month, dob.day))
    return -(dob.year - on.year - ((dob.month, dob.day) < (on.month, on.day)))


def _bracket(dob: str, on: date) -> int | None:
    if not dob.strip():
        return len(BANDS)  # "Age not recorded"
    age = _age(_day(dob), on)
    for i, (lo, hi) in enumerate(BANDS):
        if lo <= age <= hi:
            return i
    return None


class Agency:
    """One agency's units reduced to valid, normalised, deduplicated keys (with the
    category at the categories party) and the count of units without a valid key."""

    def __init__(self, units: pd.DataFrame, unit: str, category: pd.Series | None) -> None:
        self.keys: dict[str, int] = {}
        self.not_linkable = [0] * (len(BANDS) + 1 if category is not None else 1)
        units = units.assign(cat=category if category is not None else 0)
        units = units[units["cat"].notna()]
        for _, g in units.groupby(unit):
            recorded = {k.strip() for k in g["nhs_number"] if k.strip()}
            assert len(recorded) <= 1, "the generator records one number per person"
            cat = int(g["cat"].iloc[0])
            assert (g["cat"] == cat).all()
            nhs = normalise(next(iter(recorded))) if recorded else None
            if nhs is None:
                self.not_linkable[cat] += 1
            else:
                # Which category a child's second unit would take is the node's keyed
                # choice; the generator gives no child two units of one agency's
                # categories with different categories, which this checks.
                assert self.keys.setdefault(nhs, cat) == cat
        self.n_units = units[unit].nunique()


def police(region: Region, raw: dict[str, str], da_only: bool) -> Agency:
    df = region.csv(cal.POLICE_SLUG, "police", "incidents")
    lo, hi = _day(raw["period_start"]), _day(raw["period_end"])
    day = df["incident_date"].map(_day)
    keep = (day >= lo) & (day <= hi)
    if da_only:
        keep &= df["incident_type"] == "DOMESTIC_ABUSE_NOTIFICATION"
    return Agency(df[keep], "person_id", None)


def health(region: Region, raw: dict[str, str]) -> Agency:
    df = region.csv(cal.TRUST_SLUG, "health", "ed_attendances")
    df = df[df["nhs_number"].str.strip() != ""]  # no unit: refused at ingest
    # Opt-out per person (the unit): one opted-out record leaves it out entirely.
    out = df.groupby("nhs_number")["opted_out"].transform(lambda s: (s == "true").any())
    df = df[~out]
    lo, hi = _day(raw["period_start"]), _day(raw["period_end"])
    day = df["arrival_date"].map(_day)
    return Agency(df[(day >= lo) & (day <= hi)], "nhs_number", None)


def cin(region: Region, raw: dict[str, str]) -> Agency:
    df = region.csv(COUNCIL, "cin", "children")
    on = _day(raw["on_date"])
    return Agency(df, "child_id", df["dob"].map(lambda d: _bracket(d, on)))


def join(agencies: list[Agency], k: int | None, categories_from: int) -> list[int]:
    """In all of them (k None), or in at least k, by the categories party's category
    (one more cell: not in the categories party)."""
    out = [0] * (len(BANDS) + 1 + (1 if k is not None else 0))
    everyone = set().union(*(a.keys for a in agencies))
    for nhs in everyone:
        held = sum(nhs in a.keys for a in agencies)
        if held < (len(agencies) if k is None else k):
            continue
        cat = agencies[categories_from].keys.get(nhs)
        out[cat if cat is not None else len(BANDS) + 1] += 1
    return out


# --- the tests ------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [WHOLE, A_YEAR], ids=["whole-range", "one-year"])
def test_reference_template_5_is_exact(region: Region, raw: dict[str, str]) -> None:
    _, result = _run(region, "overlap-domestic-abuse-known-to-social-care", raw)
    agencies = [police(region, raw, da_only=True), cin(region, raw)]
    want = join(agencies, None, 1)
    assert [c.value for c in result.cells] == want
    assert sum(want) >= 10  # the test means something
    assert result.not_linkable == {
        "police": tuple(agencies[0].not_linkable),
        "cin": tuple(agencies[1].not_linkable),
    }
    # About 40% of police and 25% of social care records lack a number.
    assert agencies[0].not_linkable[0] > 0.2 * agencies[0].n_units
    assert sum(agencies[1].not_linkable) > 0.1 * agencies[1].n_units


@pytest.mark.parametrize("raw", [WHOLE, A_YEAR], ids=["whole-range", "one-year"])
def test_three_agencies_at_least_two_is_exact(region: Region, raw: dict[str, str]) -> None:
    _, result = _run(region, "overlap-known-to-two-of-three-agencies", raw)
    agencies = [health(region, raw), police(region, raw, da_only=False), cin(region, raw)]
    want = join(agencies, 2, 2)
    assert [c.value for c in result.cells] == want
    assert want[-1] > 0 and sum(want[:-1]) > 0  # both kinds of cell are exercised
    assert result.not_linkable == {
        "health": tuple(agencies[0].not_linkable),
        "police": tuple(agencies[1].not_linkable),
        "cin": tuple(agencies[2].not_linkable),
    }
    # Transposed digits (about 1%) fail the check digit: health's not-linkable units.
    assert agencies[0].not_linkable[0] > 0
