"""A deliberately messy SSDA903 return, as councils really send them, and the
rule that no cell value ever appears in a report, error or log."""

from __future__ import annotations

import logging
import re
from datetime import date
from pathlib import Path

import pytest

from tessera.node.ingest import IngestError, IngestReport, Rejection, ingest_dataset
from tessera.schemas import DATASETS, Table
from tests.unit.node.helpers import NOW, query, write_text

SSDA903 = DATASETS["ssda903"]

# Values that only ever appear in rejected rows. None may leave the node.
SECRETS = ("SECRETKID77", "ZZQX9", "QX9 9ZZ", "31/02/2020", "32/13/2021", "NOTASEX")

HEADER = (
    " Child ,SEX, dob ,Ethnic,UPN,MOTHER,MC_DOB,LA\r\n"
    "C001, 1 ,01/02/2010,wbri,A123456789012,,,380\r\n"  # 2
    "C002,2,2012-03-04, WBRI ,,0,,380\r\n"  # 3
    "C003,1,5/6/15,WBRI,,,,380\r\n"  # 4: two-digit year
    "C004,2,03/04/99,mwbc,,1,01/01/20,380\r\n"  # 5
    "SECRETKID77,NOTASEX,01/01/2011,WBRI,,,,380\r\n"  # 6: SEX unknown code
    "\r\n"  # 7: blank line, skipped
    "C006,1,,WBRI,,,,380\r\n"  # 8: DOB missing
)
EPISODES = (
    "CHILD,DECOM,RNE,LS,CIN,PLACE,PLACE_PROVIDER,DEC,REC,REASON_PLACE_CHANGE,HOME_POST,"
    "PL_POST,URN,LA,YEAR\n"
    "C001,01/04/2020,s,c2,n1, u1 ,pr1,,,,LS1 1AA,BD1 2XY,SC000001,380,2021\n"  # 2
    "C002,2020-05-06,B,C2,N4,u3,PR1,07/08/21,e11,CARPL,,,,380,2021\n"  # 3
    'C003,1/9/2019,S,J2,N1,K2,PR4,,,,"LS2\ncontinued",,,380,2021\n'  # 4-5: quoted newline
    "SECRETKID77,01/04/2020,S,C2,N1,ZZQX9,PR1,,,,QX9 9ZZ,,,380,2021\n"  # 6: PLACE
    "C004,31/02/2020,S,C2,N1,U1,PR1,,,,,,,380,2021\n"  # 7: no 31 February
    "C005,01/04/2020,S,C2,N1,U1,PR1,,,,,,,380\n"  # 8: a field short
    "C006,01/04/2020,S,C2,N1,U1,PR1,32/13/2021,E11,,,,,380,2021\n"  # 9: DEC
    " c007 ,2021-01-01,S,V2,N2,H5,,,,,,,,380,2021\n"  # 10
    ",2021-01-01,S,V2,N2,H5,,,,,,,,380,2021\n"  # 11: CHILD missing
    "C008,01/04/2020,S,XX,N1,QQ,PR1,,,,,,,380,2021\n"  # 12: LS and PLACE
    ",,,,,,,,,,,,,,\n"  # 13: spreadsheet's empty row, skipped
)


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, Path]:
    return (
        write_text(tmp_path / "src" / "header.csv", HEADER),
        write_text(tmp_path / "src" / "episodes.csv", EPISODES),
    )


@pytest.fixture
def report(tmp_path: Path, messy: tuple[Path, Path]) -> IngestReport:
    header, episodes = messy
    return ingest_dataset(
        SSDA903,
        {"header": [header], "episodes": [episodes]},
        tmp_path / "data",
        NOW,
        max_refused_share=1.0,
    )


def test_good_rows_load_and_bad_rows_are_counted(report: IngestReport) -> None:
    assert report.version == 1
    assert report.tables["header"].rows_loaded == 4
    assert report.tables["header"].rows_rejected == 2
    assert report.tables["episodes"].rows_loaded == 4
    assert report.tables["episodes"].rows_rejected == 6


def test_rejections_name_file_physical_line_and_column(
    report: IngestReport, messy: tuple[Path, Path]
) -> None:
    header, episodes = str(messy[0]), str(messy[1])
    assert report.rejections == [
        Rejection(header, 6, "SEX", "unknown code"),
        Rejection(header, 8, "DOB", "required value missing"),
        Rejection(episodes, 6, "PLACE", "unknown code"),
        Rejection(episodes, 7, "DECOM", "unreadable date"),
        Rejection(episodes, 8, None, "expected 15 fields, found 14"),
        Rejection(episodes, 9, "DEC", "unreadable date"),
        Rejection(episodes, 11, "CHILD", "required value missing"),
        Rejection(episodes, 12, "LS", "unknown code"),
        Rejection(episodes, 12, "PLACE", "unknown code"),
    ]
    assert report.rejections_not_listed == 0


def test_extra_columns_are_listed_as_ignored(
    report: IngestReport, messy: tuple[Path, Path]
) -> None:
    # YEAR is read (it orders stacked returns), not ignored.
    assert report.ignored_columns == {str(messy[0]): ["LA"], str(messy[1]): ["LA"]}
    text = report.render()
    assert "Ignored columns:" in text
    assert f"{messy[1]}: LA" in text


def test_values_are_normalised(tmp_path: Path, report: IngestReport) -> None:
    db = tmp_path / "data" / "ssda903" / "v1.duckdb"
    assert query(db, "SELECT CHILD, SEX, DOB, ETHNIC, MOTHER, MC_DOB FROM header ORDER BY 1") == [
        ("C001", "1", date(2010, 2, 1), "WBRI", None, None),
        ("C002", "2", date(2012, 3, 4), "WBRI", "0", None),
        ("C003", "1", date(2015, 6, 5), "WBRI", None, None),
        ("C004", "2", date(1999, 4, 3), "MWBC", "1", date(2020, 1, 1)),
    ]
    rows = query(
        db,
        "SELECT CHILD, DECOM, RNE, LS, CIN, PLACE, PLACE_PROVIDER, DEC, REC, HOME_POST "
        "FROM episodes ORDER BY 1",
    )
    assert rows == [
        ("C001", date(2020, 4, 1), "S", "C2", "N1", "U1", "PR1", None, None, "LS1 1AA"),
        ("C002", date(2020, 5, 6), "B", "C2", "N4", "U3", "PR1", date(2021, 8, 7), "E11", None),
        ("C003", date(2019, 9, 1), "S", "J2", "N1", "K2", "PR4", None, None, "LS2\ncontinued"),
        ("c007", date(2021, 1, 1), "S", "V2", "N2", "H5", None, None, None, None),
    ]


def test_render_shows_lines_and_reasons(report: IngestReport, messy: tuple[Path, Path]) -> None:
    text = report.render()
    assert "line 6: PLACE: unknown code" in text
    assert "line 8: expected 15 fields, found 14" in text
    assert re.search(r"episodes +10 read +6 rejected +0 duplicates dropped +4 loaded", text)


def _strings_of(exc: BaseException) -> list[str]:
    """Everything an exception could show: its text, repr, args and whole chain."""
    out: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        out += [str(seen), repr(seen), repr(seen.args), repr(getattr(seen, "problems", None))]
        seen = seen.__cause__ or seen.__context__
    return out


def _assert_no_secret(texts: list[str]) -> None:
    blob = "\n".join(texts)
    for secret in SECRETS:
        assert secret not in blob, f"a cell value leaked: {secret!r}"


def test_no_value_leaks_into_report_manifest_or_log(
    tmp_path: Path, messy: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    header, episodes = messy
    report = ingest_dataset(
        SSDA903,
        {"header": [header], "episodes": [episodes]},
        tmp_path / "data",
        NOW,
        max_refused_share=1.0,
    )
    assert report.rows_rejected == 8  # the secrets really were in rejected rows
    manifest = (tmp_path / "data" / "ssda903" / "v1.json").read_text()
    _assert_no_secret(
        [report.render(), repr(report), str(report.rejections), manifest, caplog.text]
    )


def _failing(tmp_path: Path, episodes: Path, caplog: pytest.LogCaptureFixture) -> IngestError:
    caplog.set_level(logging.DEBUG)
    header = write_text(tmp_path / "src" / "header.csv", HEADER)
    with pytest.raises(IngestError) as info:
        ingest_dataset(
            SSDA903, {"header": [header], "episodes": [episodes]}, tmp_path / "data", NOW
        )
    _assert_no_secret([*_strings_of(info.value), caplog.text])
    assert not (tmp_path / "data" / "ssda903" / "v1.json").exists()
    return info.value


def test_no_value_leaks_when_the_header_line_is_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The first data row is taken for a header; its cells must not be echoed.
    episodes = write_text(
        tmp_path / "src" / "episodes.csv",
        "SECRETKID77,31/02/2020,S,C2,N1,ZZQX9,PR1,,,,QX9 9ZZ,,,380,2021\n",
    )
    err = _failing(tmp_path, episodes, caplog)
    assert "missing required column(s): CHILD, DECOM, LS, CIN, PLACE" in str(err)


def test_no_value_leaks_from_a_malformed_csv(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A field over the csv module's size limit: csv.Error, replaced by fixed text.
    huge = "SECRETKID77" * 20_000
    episodes = write_text(
        tmp_path / "src" / "episodes.csv",
        "CHILD,DECOM,LS,CIN,PLACE\nC1,01/04/2020,C2,N1,U1\n" + f'"{huge}",x,y,z,ZZQX9\n',
    )
    err = _failing(tmp_path, episodes, caplog)
    assert "malformed CSV" in str(err)


def test_no_value_leaks_from_undecodable_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 0x81 is invalid UTF-8 and undefined in Windows-1252.
    episodes = tmp_path / "src" / "episodes.csv"
    episodes.parent.mkdir()
    episodes.write_bytes(b"CHILD,DECOM,LS,CIN,PLACE\r\nSECRETKID77\x81,01/04/2020,C2,N1,ZZQX9\r\n")
    err = _failing(tmp_path, episodes, caplog)
    assert "not readable as UTF-8 or Windows-1252" in str(err)


def test_no_value_leaks_from_a_duckdb_load_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Force DuckDB to fail on a value; its own message would quote that value.
    from tessera.node.ingest import build

    real = build.create_sql

    def create_sql(t: Table, name: str | None = None, *, staging: bool = False) -> str:
        return real(t, name, staging=staging).replace('"CHILD" VARCHAR', '"CHILD" BIGINT')

    monkeypatch.setattr(build, "create_sql", create_sql)
    episodes = write_text(
        tmp_path / "src" / "episodes.csv",
        "CHILD,DECOM,LS,CIN,PLACE\nSECRETKID77,01/04/2020,C2,N1,U1\n",
    )
    err = _failing(tmp_path, episodes, caplog)
    assert "internal error while loading table" in str(err)
    assert err.__context__ is None and err.__cause__ is None
    assert not list((tmp_path / "data" / "ssda903").glob(".ingest-*"))
