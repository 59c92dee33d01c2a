"""The region manifest (`region.json`): who hosts what, where the files are, row counts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

NOTE = (
    "A scaled-down synthetic West Yorkshire-like region. Every person in it is made up; "
    "NHS numbers come from the 999 test range, which is never issued to a patient."
)


@dataclass(frozen=True)
class TableFile:
    path: str  # relative to the region directory, with forward slashes
    rows: int


@dataclass(frozen=True)
class DatasetFiles:
    name: str
    tables: dict[str, TableFile]


@dataclass(frozen=True)
class Organisation:
    slug: str
    name: str
    kind: str  # council, nhs_trust or police
    datasets: tuple[DatasetFiles, ...]
    child_population: int | None = None  # councils: children 0-17 living there

    def dataset(self, name: str) -> DatasetFiles:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(f"{self.slug} hosts no dataset {name!r}")


@dataclass(frozen=True)
class RegionManifest:
    seed: int
    scale: float
    reference_date: date
    child_population: int
    organisations: tuple[Organisation, ...]

    def organisation(self, slug: str) -> Organisation:
        for o in self.organisations:
            if o.slug == slug:
                return o
        raise KeyError(f"no organisation {slug!r}")

    def row_counts(self) -> dict[str, int]:
        """Rows per file, keyed by the file's relative path."""
        return {
            f.path: f.rows
            for o in self.organisations
            for d in o.datasets
            for f in d.tables.values()
        }

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "synthetic": True,
            "note": NOTE,
            "seed": self.seed,
            "scale": self.scale,
            "reference_date": self.reference_date.isoformat(),
            "child_population": self.child_population,
            "organisations": [
                {
                    "slug": o.slug,
                    "name": o.name,
                    "kind": o.kind,
                    "child_population": o.child_population,
                    "datasets": {
                        d.name: {t: {"path": f.path, "rows": f.rows} for t, f in d.tables.items()}
                        for d in o.datasets
                    },
                }
                for o in self.organisations
            ],
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RegionManifest:
        doc = json.loads(text)
        return cls(
            seed=int(doc["seed"]),
            scale=float(doc["scale"]),
            reference_date=date.fromisoformat(doc["reference_date"]),
            child_population=int(doc["child_population"]),
            organisations=tuple(
                Organisation(
                    slug=o["slug"],
                    name=o["name"],
                    kind=o["kind"],
                    child_population=o["child_population"],
                    datasets=tuple(
                        DatasetFiles(
                            name,
                            {t: TableFile(f["path"], int(f["rows"])) for t, f in tables.items()},
                        )
                        for name, tables in o["datasets"].items()
                    ),
                )
                for o in doc["organisations"]
            ),
        )
