"""Generating the whole synthetic region and writing its files."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from tessera import schemas
from tessera.synth import calibration as cal
from tessera.synth.education import simulate_education
from tessera.synth.health import simulate_health
from tessera.synth.manifest import DatasetFiles, Organisation, RegionManifest, TableFile
from tessera.synth.messy import stacked_returns
from tessera.synth.messy_cin import cin_gaps
from tessera.synth.police import simulate_police
from tessera.synth.population import build_population
from tessera.synth.rng import make_rng
from tessera.synth.social_care import CareFlags, simulate_council
from tessera.synth.writer import Tables, write_rows, write_table

MANIFEST_NAME = "region.json"


def _write_dataset(out_dir: Path, slug: str, name: str, tables: Tables) -> DatasetFiles:
    dataset = schemas.DATASETS[name]
    files: dict[str, TableFile] = {}
    for table in dataset.tables:
        rel = f"{slug}/{name}/{table.name}.csv"
        rows = write_table(out_dir / rel, table, tables[table.name])
        files[table.name] = TableFile(rel, rows)
    return DatasetFiles(name, files)


def _write_messy(
    out_dir: Path, slug: str, tables: Tables, seed: int, reference_date: date
) -> DatasetFiles:
    """SSDA903 as stacked yearly returns with a YEAR column (tessera.synth.messy)."""
    messy, _ = stacked_returns(make_rng(seed, f"messy/{slug}"), tables, reference_date)
    files: dict[str, TableFile] = {}
    for name, columns in messy.items():
        rel = f"{slug}/ssda903/{name}.csv"
        files[name] = TableFile(rel, write_rows(out_dir / rel, columns))
    return DatasetFiles("ssda903", files)


def generate_region(
    out_dir: Path,
    *,
    scale: float = 0.01,
    seed: int = 1,
    reference_date: date = date(2026, 3, 31),
    messy: bool = False,
) -> RegionManifest:
    """Generate the synthetic region under `out_dir` and write `region.json` there.

    The same seed, scale and reference date give byte-identical files. With
    ``messy``, each council's SSDA903 files are written as councils hold them:
    stacked yearly returns, repeated and missing headers, overlapping episodes,
    spreadsheet-style values and mixed date formats (tessera.synth.messy), and
    their CIN files lack some children rows and some NFA referrals' primary need
    (tessera.synth.messy_cin).
    """
    out_dir = Path(out_dir)
    pop = build_population(make_rng(seed, "population"), scale, reference_date)
    flags = CareFlags.empty(pop.size)
    organisations: list[Organisation] = []
    for k, council in enumerate(cal.COUNCILS):
        ssda903, cin = simulate_council(
            make_rng(seed, f"social_care/{council.slug}"), pop, k, flags
        )
        education = simulate_education(make_rng(seed, f"education/{council.slug}"), pop, k, flags)
        datasets = (
            _write_messy(out_dir, council.slug, ssda903, seed, reference_date)
            if messy
            else _write_dataset(out_dir, council.slug, "ssda903", ssda903),
            _write_dataset(
                out_dir,
                council.slug,
                "cin",
                cin_gaps(make_rng(seed, f"messy-cin/{council.slug}"), cin) if messy else cin,
            ),
            _write_dataset(out_dir, council.slug, "education", education),
        )
        size = int(pop.members(k).size)
        organisations.append(Organisation(council.slug, council.name, "council", datasets, size))
    health = simulate_health(make_rng(seed, "health"), pop, flags)
    organisations.append(
        Organisation(
            cal.TRUST_SLUG,
            cal.TRUST_NAME,
            "nhs_trust",
            (_write_dataset(out_dir, cal.TRUST_SLUG, "health", health),),
        )
    )
    police = simulate_police(make_rng(seed, "police"), pop, flags)
    organisations.append(
        Organisation(
            cal.POLICE_SLUG,
            cal.POLICE_NAME,
            "police",
            (_write_dataset(out_dir, cal.POLICE_SLUG, "police", police),),
        )
    )
    manifest = RegionManifest(
        seed=seed,
        scale=scale,
        reference_date=reference_date,
        child_population=pop.size,
        organisations=tuple(organisations),
    )
    (out_dir / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    return manifest
