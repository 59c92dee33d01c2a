"""`tessera synth`: write the synthetic West Yorkshire-like region for the demo and tests."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

from tessera.synth import RegionManifest, generate_region
from tessera.synth.calibration import CHILD_POPULATION_AT_SCALE_1
from tessera.synth.region import MANIFEST_NAME


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate a synthetic region (five councils, an NHS trust, a police force)",
        description=(
            "Write a synthetic West Yorkshire-like region: one population of made-up children "
            "appearing consistently in each council's ssda903, cin and education files, the "
            "trust's ED attendances and the force's incidents, plus region.json. The same "
            "seed and scale give byte-identical files."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="directory to write into")
    p.add_argument(
        "--scale",
        type=_positive_float,
        default=0.01,
        help=f"share of the real child population (~{CHILD_POPULATION_AT_SCALE_1:,}); default 0.01",
    )
    p.add_argument("--seed", type=_non_negative_int, default=1, help="default 1")
    p.add_argument(
        "--reference-date",
        type=_iso_date,
        default=date(2026, 3, 31),
        metavar="YYYY-MM-DD",
        help="the census day ('31 March'); default 2026-03-31",
    )
    p.add_argument(
        "--messy",
        action="store_true",
        help="write each council's SSDA903 as councils hold it: stacked yearly returns "
        "(a YEAR column), repeated and missing headers, overlapping episodes, "
        "spreadsheet-style values and mixed date formats; and its CIN with some "
        "children rows and some NFA referrals' primary need missing",
    )
    p.set_defaults(handler=run)


def summary(manifest: RegionManifest, out_dir: Path) -> list[str]:
    lines = [
        f"Synthetic region written to {out_dir} (manifest: {MANIFEST_NAME}).",
        f"A scaled-down synthetic region (scale {manifest.scale:g}): "
        f"{manifest.child_population:,} made-up children aged 0-17, "
        f"against about {CHILD_POPULATION_AT_SCALE_1:,} in the real region. "
        f"Seed {manifest.seed}, reference date {manifest.reference_date.isoformat()}.",
    ]
    for org in manifest.organisations:
        who = f"{org.name} ({org.kind}"
        who += f", {org.child_population:,} children)" if org.child_population else ")"
        lines.append(f"  {who}")
        for ds in org.datasets:
            rows = ", ".join(f"{t} {f.rows:,}" for t, f in ds.tables.items())
            lines.append(f"    {ds.name}: {rows}")
    return lines


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        manifest = generate_region(
            args.out_dir,
            scale=args.scale,
            seed=args.seed,
            reference_date=args.reference_date,
            messy=args.messy,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary(manifest, args.out_dir)))
    return 0
