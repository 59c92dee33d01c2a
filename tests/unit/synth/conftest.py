"""One moderate synthetic region (scale 0.02, about 10,000 children), built once for the
synth tests, with helpers to read its files back."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pytest

from tessera.synth import RegionManifest, generate_region
from tessera.synth.population import Population, build_population
from tessera.synth.rng import make_rng

SCALE = 0.02
SEED = 7
REF = date(2026, 3, 31)
COUNCILS = ("bradford", "calderdale", "kirklees", "leeds", "wakefield")
TRUST = "west-yorkshire-nhs-trust"
POLICE = "west-yorkshire-police"


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def parse_dmy(text: str) -> date:
    return datetime.strptime(text, "%d/%m/%Y").date()


def age_on(dob: date, on: date) -> int:
    return on.year - dob.year - ((on.month, on.day) < (dob.month, dob.day))


@dataclass(frozen=True)
class Region:
    root: Path
    manifest: RegionManifest
    population: Population

    def table(self, org: str, dataset: str, table: str) -> list[dict[str, str]]:
        return read_csv(self.root / org / dataset / f"{table}.csv")[1]

    def councils(self, dataset: str, table: str) -> list[dict[str, str]]:
        """Rows from every council, each with an added `_council` key."""
        out: list[dict[str, str]] = []
        for council in COUNCILS:
            out += [{**r, "_council": council} for r in self.table(council, dataset, table)]
        return out


@pytest.fixture(scope="session")
def region(tmp_path_factory: pytest.TempPathFactory) -> Region:
    root = tmp_path_factory.mktemp("region")
    manifest = generate_region(root, scale=SCALE, seed=SEED, reference_date=REF)
    population = build_population(make_rng(SEED, "population"), SCALE, REF)
    return Region(root, manifest, population)
