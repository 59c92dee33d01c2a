"""Every file has exactly the schema's columns, and every value fits its column."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from tessera import schemas
from tessera.schemas import ColumnType

from .conftest import COUNCILS, POLICE, TRUST, Region, parse_dmy, read_csv

EXPECTED = {
    **{c: ("ssda903", "cin", "education") for c in COUNCILS},
    TRUST: ("health",),
    POLICE: ("police",),
}


def check_value(column: schemas.Column, value: str, dataset: str) -> None:
    if column.type is ColumnType.CODE:
        assert value in column.codes
    elif column.type is ColumnType.BOOL:
        assert value in ("true", "false")
    elif column.type is ColumnType.INT:
        number = int(value)
        assert column.min is None or number >= column.min
        assert column.max is None or number <= column.max
    elif column.type is ColumnType.DATE:
        if dataset == "ssda903":  # as councils send them
            assert re.fullmatch(r"\d\d/\d\d/\d{4}", value)
            parse_dmy(value)
        else:
            assert date.fromisoformat(value).isoformat() == value


def test_every_table_matches_its_schema(region: Region) -> None:
    hosted = {o.slug: tuple(d.name for d in o.datasets) for o in region.manifest.organisations}
    assert hosted == EXPECTED
    for org in region.manifest.organisations:
        for files in org.datasets:
            dataset = schemas.DATASETS[files.name]
            assert set(files.tables) == {t.name for t in dataset.tables}
            for table in dataset.tables:
                path = region.root / files.tables[table.name].path
                assert path == region.root / org.slug / files.name / f"{table.name}.csv"
                header, rows = read_csv(path)
                assert header == [c.name for c in table.columns]
                blank_required = 0
                for row in rows:
                    for column in table.columns:
                        value = row[column.name]
                        if value:
                            check_value(column, value, files.name)
                        elif column.required:
                            blank_required += 1
                # The one allowed gap: an ED arrival with no NHS number captured (~1%).
                if (files.name, table.name) == ("health", "ed_attendances"):
                    assert blank_required < 0.02 * len(rows)
                else:
                    assert blank_required == 0, (org.slug, table.name)


def test_files_are_plain_utf8_csv_with_unix_newlines(region: Region) -> None:
    for path in region.manifest.row_counts():
        data = (region.root / path).read_bytes()
        assert b"\r" not in data
        data.decode("utf-8")
        assert Path(path).suffix == ".csv"


def test_randomness_is_made_only_in_rng_module() -> None:
    package = Path(__file__).resolve().parents[3] / "tessera" / "synth"
    pattern = re.compile(r"numpy\.random|np\.random|default_rng|import random|SeedSequence")
    offenders = [
        p.name
        for p in package.glob("*.py")
        if p.name != "rng.py" and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    assert "never" in (package / "rng.py").read_text(encoding="utf-8").lower()
