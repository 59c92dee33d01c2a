"""Every dataset ingests; Parquet works; the request and file-level checks."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pytest

from tessera.node.ingest import IngestError, Rejection, ingest_dataset
from tessera.schemas import DATASETS, ColumnType
from tests.unit.node.helpers import (
    NOW,
    connect_version,
    csv_to_parquet,
    query,
    valid_file_set,
    write_text,
)

DUCKDB_TYPES = {
    ColumnType.TEXT: "VARCHAR",
    ColumnType.CODE: "VARCHAR",
    ColumnType.DATE: "DATE",
    ColumnType.INT: "BIGINT",
    ColumnType.BOOL: "BOOLEAN",
}


def assert_schema(db: Path, dataset_name: str) -> None:
    dataset = DATASETS[dataset_name]
    with connect_version(db) as con:
        for table in dataset.tables:
            described = con.execute(f'DESCRIBE "{table.name}"').fetchall()
            assert [(r[0], r[1]) for r in described] == [
                (c.name, DUCKDB_TYPES[c.type]) for c in table.columns
            ]


@pytest.mark.parametrize("name", ["ssda903", "cin", "education", "health", "police"])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_each_dataset_ingests_a_valid_file_set(tmp_path: Path, name: str, fmt: str) -> None:
    dataset = DATASETS[name]
    files = valid_file_set(tmp_path / "src", dataset, rows=7)
    if fmt == "parquet":
        files = {
            t: [csv_to_parquet(p, p.with_suffix(".parquet")) for p in ps] for t, ps in files.items()
        }
    report = ingest_dataset(dataset, files, tmp_path / "data", NOW, max_refused_share=1.0)
    assert report.rejections == []
    assert {t: (c.rows_loaded, c.rows_rejected) for t, c in report.tables.items()} == {
        t.name: (7, 0) for t in dataset.tables
    }
    db = tmp_path / "data" / name / "v1.duckdb"
    assert_schema(db, name)
    for table in dataset.tables:
        assert query(db, f'SELECT count(*) FROM "{table.name}"') == [(7,)]


def test_health_values(tmp_path: Path) -> None:
    src = write_text(
        tmp_path / "ed.csv",
        """
        NHS_Number,Arrival_Date,Age_Years,Attendance_Category,Injury,Safeguarding_Concern,Opted_Out
        9434765919,2025-01-02,3,1,Y,n,0
        9434765919,03/01/2025,3,,yes,,TRUE
        4010232137,03/01/25,121,1,y,,0
        4010232137,03/01/25,4,1,perhaps,,0
        """,
    )
    report = ingest_dataset(
        DATASETS["health"], {"ed_attendances": [src]}, tmp_path / "data", NOW, max_refused_share=1.0
    )
    assert report.rejections == [
        Rejection(str(src), 4, "age_years", "out of range"),
        Rejection(str(src), 5, "injury", "not a yes/no value"),
    ]
    db = tmp_path / "data" / "health" / "v1.duckdb"
    assert query(db, "SELECT * FROM ed_attendances ORDER BY arrival_date") == [
        ("9434765919", date(2025, 1, 2), 3, "1", True, False, False),
        ("9434765919", date(2025, 1, 3), 3, None, True, None, True),
    ]


def test_typed_parquet_reports_rows_by_position(tmp_path: Path) -> None:
    children = tmp_path / "children.parquet"
    with duckdb.connect() as con:
        con.execute(
            "COPY (SELECT * FROM (VALUES "
            "('C1', DATE '2015-01-02', 1, NULL), "
            "('C2', DATE '2016-03-04', 2, 'U2'), "
            "('C3', DATE '2017-05-06', 3, NULL), "
            "('C4', NULL, 1, NULL)) AS t(child_id, DOB, sex, upn)) "
            f"TO '{children}' (FORMAT parquet)"
        )
    files = valid_file_set(tmp_path / "src", DATASETS["cin"])
    files["children"] = [children]
    report = ingest_dataset(DATASETS["cin"], files, tmp_path / "data", NOW, max_refused_share=1.0)
    assert report.rejections == [
        Rejection(str(children), 3, "sex", "unknown code"),
        Rejection(str(children), 4, "dob", "required value missing"),
    ]
    assert "row 3: sex: unknown code" in report.render()
    assert report.absent_columns == {str(children): ["nhs_number"]}
    db = tmp_path / "data" / "cin" / "v1.duckdb"
    assert query(db, "SELECT * FROM children ORDER BY 1") == [
        ("C1", date(2015, 1, 2), "1", None, None),
        ("C2", date(2016, 3, 4), "2", "U2", None),
    ]


def test_a_table_may_have_several_files_of_either_kind(tmp_path: Path) -> None:
    police = DATASETS["police"]
    first = valid_file_set(tmp_path / "a", police, rows=3)["incidents"][0]
    second = valid_file_set(tmp_path / "b", police, rows=4)["incidents"][0]
    third = csv_to_parquet(second, tmp_path / "c.parquet")
    report = ingest_dataset(
        police, {"incidents": [first, second, third]}, tmp_path / "data", NOW, max_refused_share=1.0
    )
    assert report.tables["incidents"].rows_loaded == 11


def test_optional_tables_may_be_left_out(tmp_path: Path) -> None:
    education = DATASETS["education"]
    files = valid_file_set(tmp_path / "src", education)
    del files["exclusions"]
    report = ingest_dataset(education, files, tmp_path / "data", NOW, max_refused_share=1.0)
    assert report.tables["exclusions"].rows_loaded == 0
    assert query(tmp_path / "data/education/v1.duckdb", "SELECT count(*) FROM exclusions") == [(0,)]


def test_windows_1252_files_are_read(tmp_path: Path) -> None:
    src = write_text(
        tmp_path / "incidents.csv",
        "person_id,incident_date,incident_type\r\nZoë-1,01/02/2024,missing_episode\r\n",
        encoding="cp1252",
    )
    report = ingest_dataset(
        DATASETS["police"], {"incidents": [src]}, tmp_path / "data", NOW, max_refused_share=1.0
    )
    assert report.notes == [f"{src}: not UTF-8, read as Windows-1252"]
    db = tmp_path / "data" / "police" / "v1.duckdb"
    assert query(db, "SELECT person_id, incident_type FROM incidents") == [
        ("Zoë-1", "MISSING_EPISODE")
    ]


def test_utf8_bom_and_quoted_fields(tmp_path: Path) -> None:
    src = tmp_path / "incidents.csv"
    src.write_bytes(
        "\ufeffperson_id,incident_date,incident_type,notes\n"
        '"P,1",2024-02-01,YOUTH_OFFENCE,"a ""quoted"" note"\n'.encode()
    )
    report = ingest_dataset(
        DATASETS["police"], {"incidents": [src]}, tmp_path / "data", NOW, max_refused_share=1.0
    )
    assert report.ignored_columns == {str(src): ["notes"]}
    assert query(tmp_path / "data/police/v1.duckdb", "SELECT person_id FROM incidents") == [
        ("P,1",)
    ]


def test_rejections_beyond_the_limit_are_counted_not_listed(tmp_path: Path) -> None:
    lines = ["person_id,incident_date,incident_type"]
    lines += [f"P{i},2024-02-01,NOT_A_TYPE" for i in range(1500)]
    lines.append("P9999,2024-02-01,YOUTH_OFFENCE")  # one usable row, so it publishes
    src = write_text(tmp_path / "incidents.csv", "\n".join(lines) + "\n")
    report = ingest_dataset(
        DATASETS["police"], {"incidents": [src]}, tmp_path / "data", NOW, max_refused_share=1.0
    )
    assert report.tables["incidents"].rows_rejected == 1500
    assert len(report.rejections) == 1000
    assert report.rejections_not_listed == 500
    assert report.rejections[-1].line == 1001
    assert "500 more problems not listed" in report.render()


def test_large_file_crosses_batches(tmp_path: Path) -> None:
    # More rows than one batch, with bad rows and a multi-line record far in.
    lines = ["person_id,incident_date,incident_type"]
    for i in range(45_000):
        if i == 30_000:
            lines.append('"P\nX",2024-02-01,YOUTH_OFFENCE')
        elif i % 10_000 == 7:
            lines.append(f"P{i},2024-02-30,YOUTH_OFFENCE")
        else:
            lines.append(f"P{i},2024-02-01,youth_offence")
    src = write_text(tmp_path / "incidents.csv", "\n".join(lines) + "\n")
    report = ingest_dataset(
        DATASETS["police"], {"incidents": [src]}, tmp_path / "data", NOW, max_refused_share=1.0
    )
    # Line of row i is i + 2; the multi-line record shifts everything after it by one.
    assert [r.line for r in report.rejections] == [9, 10_009, 20_009, 30_010, 40_010]
    assert report.tables["incidents"].rows_loaded == 45_000 - 5


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"header": ["h.csv"]}, "required table episodes has no file"),
        ({"header": ["h.csv"], "episodes": []}, "required table episodes has no file"),
        ({"header": ["h.csv"], "episodes": ["e.csv"], "uasc": ["e.csv"]}, "no table 'uasc'"),
        ({"header": ["h.csv", "h.csv"], "episodes": ["e.csv"]}, "given more than once"),
        ({"header": ["h.csv"], "episodes": ["e.xlsx"]}, "not a .csv or .parquet file"),
        ({"header": ["h.csv"], "episodes": ["missing.csv"]}, "file not found"),
        ({"header": ["h.csv"], "episodes": ["empty.csv"]}, "empty file: no header line"),
        ({"header": ["h.csv"], "episodes": ["bad.parquet"]}, "could not read Parquet file"),
        ({"header": ["h.csv"], "episodes": ["h2.csv"]}, "missing required column(s): DECOM"),
    ],
)
def test_request_and_file_problems_write_nothing(
    tmp_path: Path, files: dict[str, list[str]], message: str
) -> None:
    ssda903 = DATASETS["ssda903"]
    valid = valid_file_set(tmp_path, ssda903)
    (tmp_path / "h.csv").write_bytes(valid["header"][0].read_bytes())
    (tmp_path / "h2.csv").write_bytes(valid["header"][0].read_bytes())
    (tmp_path / "e.csv").write_bytes(valid["episodes"][0].read_bytes())
    (tmp_path / "e.xlsx").write_bytes(b"PK")
    (tmp_path / "empty.csv").write_bytes(b"\r\n\r\n")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    paths = {t: [tmp_path / p for p in ps] for t, ps in files.items()}
    with pytest.raises(IngestError) as info:
        ingest_dataset(ssda903, paths, tmp_path / "data", NOW, max_refused_share=1.0)
    assert message in str(info.value)
    assert not (tmp_path / "data" / "ssda903").exists()


def test_every_file_problem_is_reported_at_once(tmp_path: Path) -> None:
    h = write_text(tmp_path / "h.csv", "CHILD,SEX\n")
    e = write_text(tmp_path / "e.csv", "CHILD,DECOM\n")
    with pytest.raises(IngestError) as info:
        ingest_dataset(DATASETS["ssda903"], {"header": [h], "episodes": [e]}, tmp_path, NOW)
    assert info.value.problems == [
        f"table header, file {h}: missing required column(s): DOB",
        f"table episodes, file {e}: missing required column(s): LS, CIN, PLACE",
    ]


def test_naive_now_is_refused(tmp_path: Path) -> None:
    files = valid_file_set(tmp_path, DATASETS["police"])
    with pytest.raises(ValueError, match="timezone"):
        ingest_dataset(DATASETS["police"], files, tmp_path, NOW.replace(tzinfo=None))


def test_trailing_empty_fields_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    src = tmp_path / "incidents.csv"
    src.write_text(
        "\n"  # 1: blank line before the header
        "person_id,incident_date,incident_type\n"  # 2
        "P1,2024-02-01,YOUTH_OFFENCE,,\n"  # 3: trailing empty fields from a spreadsheet
        "P2,2024-02-01,YOUTH_OFFENCE,x\n"  # 4: a real extra field
        "\n"  # 5
        "P3,2024-02-01\n",  # 6
    )
    report = ingest_dataset(
        DATASETS["police"], {"incidents": [src]}, tmp_path / "data", NOW, max_refused_share=1.0
    )
    assert report.tables["incidents"].rows_loaded == 1
    assert report.rejections == [
        Rejection(str(src), 4, None, "expected 3 fields, found 4"),
        Rejection(str(src), 6, None, "expected 3 fields, found 2"),
    ]


def test_parquet_timestamps_load_as_dates(tmp_path: Path) -> None:
    incidents = tmp_path / "incidents.parquet"
    with duckdb.connect() as con:
        con.execute(
            "COPY (SELECT 'P1' AS person_id, TIMESTAMP '2024-02-01 13:14:15' AS incident_date, "
            f"'youth_offence' AS incident_type) TO '{incidents}' (FORMAT parquet)"
        )
    ingest_dataset(
        DATASETS["police"],
        {"incidents": [incidents]},
        tmp_path / "data",
        NOW,
        max_refused_share=1.0,
    )
    assert query(tmp_path / "data/police/v1.duckdb", "SELECT * FROM incidents") == [
        ("P1", None, date(2024, 2, 1), "YOUTH_OFFENCE")
    ]
