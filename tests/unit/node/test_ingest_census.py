"""The CIN census as LAs produce it: DfE XML and the flat CSV export."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.node.ingest import IngestError, ingest_dataset
from tessera.schemas import DATASETS
from tests.unit.node.helpers import NOW, query, write_text

CIN = DATASETS["cin"]

XML = """<?xml version="1.0" encoding="utf-8"?>
<Message xmlns="http://www.example.org/cin">
 <Header><CollectionDetails><Collection>CIN</Collection><Year>2025</Year></CollectionDetails></Header>
 <Children>
  <Child>
   <ChildIdentifiers><LAchildID>A1</LAchildID><UPN>A123</UPN>
    <PersonBirthDate>2015-04-01</PersonBirthDate><GenderCurrent>1</GenderCurrent></ChildIdentifiers>
   <CINdetails><CINreferralDate>2024-05-01</CINreferralDate><ReferralSource>1A</ReferralSource>
    <PrimaryNeedCode>N1</PrimaryNeedCode><CINclosureDate>2024-09-01</CINclosureDate>
    <ReferralNFA>0</ReferralNFA>
    <ChildProtectionPlans><CPPstartDate>2024-06-01</CPPstartDate><CPPendDate/>
     <InitialCategoryOfAbuse>NEG</InitialCategoryOfAbuse></ChildProtectionPlans>
   </CINdetails>
   <CINdetails><CINreferralDate>2025-01-02</CINreferralDate><ReferralSource>2A</ReferralSource>
    <PrimaryNeedCode>N4</PrimaryNeedCode><ReferralNFA>true</ReferralNFA></CINdetails>
  </Child>
  <Child>
   <ChildIdentifiers><LAchildID>B2</LAchildID>
    <PersonBirthDate>20/02/2019</PersonBirthDate><GenderCurrent>SECRETSEX</GenderCurrent></ChildIdentifiers>
   <CINdetails><CINreferralDate>2025-02-01</CINreferralDate><PrimaryNeedCode>N2</PrimaryNeedCode>
    <ReferralNFA>0</ReferralNFA></CINdetails>
  </Child>
 </Children>
</Message>
"""


def _ingest(tmp_path: Path, name: str, text: str, **kw: object):  # type: ignore[no-untyped-def]
    path = write_text(tmp_path / "src" / name, text)
    return ingest_dataset(CIN, {"census": [path]}, tmp_path / "data", NOW, **kw)  # type: ignore[arg-type]


def test_census_xml_fills_every_cin_table(tmp_path: Path) -> None:
    report = _ingest(tmp_path, "census.xml", XML, max_refused_share=1.0)
    db = tmp_path / "data" / "cin" / "v1.duckdb"
    assert query(db, "SELECT child_id, dob, sex FROM children") == [("A1", date(2015, 4, 1), "1")]
    assert query(db, "SELECT child_id, referral_date, primary_need, nfa FROM referrals") == [
        ("A1", date(2024, 5, 1), "N1", False),
        ("A1", date(2025, 1, 2), "N4", True),
        ("B2", date(2025, 2, 1), "N2", False),
    ]
    assert query(db, "SELECT child_id, start_date, end_date FROM cin_episodes") == [
        ("A1", date(2024, 5, 1), date(2024, 9, 1)),
        ("B2", date(2025, 2, 1), None),
    ]
    assert query(db, "SELECT initial_category, end_date FROM cp_plans") == [("NEGLECT", None)]
    # B2's child record was refused (unknown sex): counted, located by child number.
    assert report.tables["children"].rows_rejected == 1
    assert report.children_without_header == {"referrals": 1, "cin_episodes": 1, "cp_plans": 0}
    text = report.render()
    assert "child 2: sex: unknown code" in text
    assert "SECRETSEX" not in text
    assert "DfE category-of-abuse code read as the schema's" in text


def test_flat_census_export_reconciles_repeated_identifiers(tmp_path: Path) -> None:
    flat = (
        "LAchildID,UPN,PersonBirthDate,GenderCurrent,CINreferralDate,ReferralSource,"
        "PrimaryNeedCode,CINclosureDate,ReferralNFA,CPPstartDate,CPPendDate,"
        "InitialCategoryOfAbuse\n"
        "A1,A123,01/04/2015,1,01/05/2024,1A,N1,01/09/2024,false,01/06/2024,,NEG\n"
        "A1,A123,01/04/2015,1,01/05/2024,1A,N1,01/09/2024,false,01/07/2024,01/08/2024,PHY\n"
        "A1,A123,01/04/2015,1,02/01/2025,2A,N4,,true,,,\n"
    )
    report = _ingest(tmp_path, "census.csv", flat)
    db = tmp_path / "data" / "cin" / "v1.duckdb"
    assert query(db, "SELECT count(*) FROM children") == [(1,)]
    assert query(db, "SELECT count(*) FROM referrals") == [(2,)]
    assert query(db, "SELECT count(*) FROM cin_episodes") == [(1,)]
    assert query(db, "SELECT initial_category FROM cp_plans ORDER BY 1") == [
        ("NEGLECT",),
        ("PHYSICAL",),
    ]
    assert report.duplicates["children"] == {"exact copy": 2}
    assert report.duplicates["referrals"] == {"exact copy": 1}


@pytest.mark.parametrize(
    "text",
    [
        # An entity bomb: refused before anything is expanded.
        '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY a "SECRETKID77SECRETKID77">'
        '<!ENTITY b "&a;&a;&a;&a;">]><Message><Children><Child><ChildIdentifiers>'
        "<LAchildID>&b;</LAchildID></ChildIdentifiers></Child></Children></Message>",
        # An external entity.
        '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        "<Message>&x;</Message>",
        "<Message><Children><Child>SECRETKID77</Chil></Children></Message>",
    ],
)
def test_unsafe_or_broken_xml_is_refused_without_quoting_it(tmp_path: Path, text: str) -> None:
    with pytest.raises(IngestError) as info:
        _ingest(tmp_path, "census.xml", text)
    message = str(info.value)
    assert "SECRETKID77" not in message and "passwd" not in message
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert not (tmp_path / "data" / "cin" / "v1.json").exists()


def test_census_is_only_for_cin(tmp_path: Path) -> None:
    path = write_text(tmp_path / "census.xml", XML)
    with pytest.raises(IngestError, match="has no table 'census'"):
        ingest_dataset(DATASETS["ssda903"], {"census": [path]}, tmp_path / "data", NOW)


_DAY = st.integers(0, 400)


@st.composite
def _census(draw: st.DrawFn) -> dict[str, dict[str, list[str]]]:
    """Small consistent cin tables: every plan starts on or after one of its child's
    referrals, so that the census forms can file it under a CINdetails."""
    base = date(2023, 1, 1)
    tables: dict[str, dict[str, list[str]]] = {
        "children": {k: [] for k in ("child_id", "dob", "sex", "upn", "nhs_number")},
        "referrals": {
            k: [] for k in ("child_id", "referral_date", "referral_source", "primary_need", "nfa")
        },
        "cin_episodes": {k: [] for k in ("child_id", "start_date", "end_date", "primary_need")},
        "cp_plans": {k: [] for k in ("child_id", "start_date", "end_date", "initial_category")},
    }

    def add(table: str, *values: str) -> None:
        for k, v in zip(tables[table], values, strict=True):
            tables[table][k].append(v)

    for n in range(draw(st.integers(1, 5))):
        cid = f"K{n}"
        add("children", cid, (base - timedelta(days=3000 + n)).isoformat(), "12"[n % 2], "", "")
        days = sorted(draw(st.sets(_DAY, min_size=1, max_size=3)))
        for d in days:
            when = (base + timedelta(days=d)).isoformat()
            need = draw(st.sampled_from(["N1", "N4", "N9"]))
            nfa = draw(st.booleans())
            add("referrals", cid, when, "1A", need, "true" if nfa else "false")
            if not nfa:
                end = draw(st.one_of(st.none(), st.integers(1, 90)))
                end_s = "" if end is None else (base + timedelta(days=d + end)).isoformat()
                add("cin_episodes", cid, when, end_s, need)
        if draw(st.booleans()):
            start = (base + timedelta(days=days[0] + draw(st.integers(0, 30)))).isoformat()
            cat = draw(st.sampled_from(["NEGLECT", "PHYSICAL", "SEXUAL", "EMOTIONAL", "MULTIPLE"]))
            add("cp_plans", cid, start, "", cat)
    return tables


def _rows(t: dict[str, list[str]], cols: tuple[str, ...]) -> list[tuple[object, ...]]:
    def cell(k: str, v: str) -> object:
        if k in ("dob", "referral_date", "start_date", "end_date"):
            return date.fromisoformat(v) if v else None
        if k == "nfa":
            return v == "true"
        return v or None

    n = len(t[cols[0]])
    return sorted(tuple(cell(k, t[k][i]) for k in cols) for i in range(n))


@given(_census(), st.sampled_from(["xml", "flat"]))
@settings(max_examples=15, deadline=None)
def test_census_forms_round_trip(
    tmp_path_factory: pytest.TempPathFactory, cin: dict[str, dict[str, list[str]]], form: str
) -> None:
    from tessera.synth.census import census_flat_csv, census_xml

    tmp = tmp_path_factory.mktemp("census")
    text = census_xml(cin, 2024) if form == "xml" else census_flat_csv(cin)
    report = _ingest(tmp, f"census.{'xml' if form == 'xml' else 'csv'}", text)
    assert report.rows_rejected == 0
    db = tmp / "data" / "cin" / "v1.duckdb"
    for table, cols in (
        ("children", ("child_id", "dob", "sex")),
        ("referrals", ("child_id", "referral_date", "primary_need", "nfa")),
        ("cin_episodes", ("child_id", "start_date", "end_date", "primary_need")),
        ("cp_plans", ("child_id", "start_date", "initial_category")),
    ):
        got = query(db, f"SELECT {', '.join(cols)} FROM {table} ORDER BY ALL")
        assert got == _rows(cin[table], cols), table
