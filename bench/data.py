"""Synthetic `health` data at benchmark scale, written straight into the node's
storage layout (``<data_dir>/health/v<N>.sealed`` + manifest) with DuckDB SQL.

A plaintext copy of the same rows stays beside it (``<data_dir>/plain.duckdb``,
in the benchmark's temporary folder only) for the engines the node is compared
with (SmartNoise SQL, OpenDP on numpy, bare DuckDB) and for the accuracy checks.

CSV ingest would take minutes at 10^7 rows; ``INSERT ... SELECT FROM range(n)``
takes seconds. Values come from DuckDB's ``hash()`` of the row number and a
seed, so a (size, seed) pair always gives the same data. Each seed has its own
people (the NHS number starts with the seed), so nodes hold disjoint populations.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import numpy.typing as npt

from bench import stats
from tessera import schemas
from tessera.clock import isoformat
from tessera.node.ingest.build import DUCKDB_TYPES
from tessera.node.ingest.manifest import (
    Manifest,
    content_sha256,
    ingest_lock,
    manifest_path,
    next_version,
    publish,
    remove_leftovers,
)
from tessera.node.ingest.report import TableCounts

DATASET = "health"
TABLE = "ed_attendances"
FIRST_DAY = "2016-01-01"
DAYS = 3653  # 2016-01-01 .. 2025-12-31
PLAIN = "plain.duckdb"

# One row per attendance; about two attendances per person. Age is the person's;
# 5% of categories are not recorded; 3% of people opted out.
_INSERT = f"""
INSERT INTO {TABLE}
SELECT CAST(1000000000 + $seed * 10000000 + u AS VARCHAR) AS nhs_number,
       DATE '{FIRST_DAY}' + CAST(hash(i, $seed, 2) % {DAYS} AS INTEGER) AS arrival_date,
       CAST(hash(u, $seed, 3) % 19 AS BIGINT) AS age_years,
       CASE WHEN c < 5 THEN NULL WHEN c < 60 THEN '1' WHEN c < 80 THEN '2'
            WHEN c < 95 THEN '3' ELSE '4' END AS attendance_category,
       hash(i, $seed, 5) % 100 < 30 AS injury,
       hash(i, $seed, 6) % 100 < 2 AS safeguarding_concern,
       hash(u, $seed, 7) % 100 < 3 AS opted_out
FROM (SELECT i, hash(i, $seed, 1) % $units AS u, hash(i, $seed, 4) % 100 AS c
      FROM range($n) t(i))
"""


@dataclass(frozen=True)
class Generated:
    data_dir: Path  # a node's data_dir: holds health/v1.sealed and its manifest
    records: int
    seed: int
    seconds: float

    @property
    def database(self) -> Path:
        """The plaintext copy (benchmark only; a node never reads it)."""
        return self.data_dir / PLAIN


def _create_sql() -> str:
    ds = schemas.dataset(DATASET)
    assert ds is not None
    table = ds.table(TABLE)
    assert table is not None
    cols = ", ".join(
        f'"{c.name}" {DUCKDB_TYPES[c.type]}{" NOT NULL" if c.required else ""}'
        for c in table.columns
    )
    return f"CREATE TABLE {TABLE} ({cols})"


def generate(data_dir: Path, records: int, seed: int) -> Generated:
    """Publish ``records`` synthetic ED attendances as version 1 of `health` in ``data_dir``
    (reused if already there)."""
    if not 0 <= seed < 100:
        raise ValueError("seed must be 0..99")
    dataset_dir = data_dir / DATASET
    start = datetime.now(UTC)
    if (data_dir / PLAIN).exists() and manifest_path(dataset_dir, 1).exists():
        return Generated(data_dir, records, seed, 0.0)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    with ingest_lock(dataset_dir):
        remove_leftovers(dataset_dir)
        plain = data_dir / PLAIN
        plain.unlink(missing_ok=True)
        con = duckdb.connect(str(plain))
        con.execute("SET enable_progress_bar = false")
        try:
            con.execute(_create_sql())
            con.execute(_INSERT, {"seed": seed, "units": max(records // 2, 1), "n": records})
            con.execute("CHECKPOINT")
            tag = hashlib.sha256(f"bench:{DATASET}:{records}:{seed}".encode()).hexdigest()
            manifest = Manifest(
                dataset=DATASET,
                schema_version=1,
                version=next_version(dataset_dir),
                content_sha256=content_sha256([(TABLE, f"bench-{records}-{seed}", tag)]),
                loaded_at=isoformat(start),
                tables={TABLE: TableCounts(records, 0)},
            )
            publish(dataset_dir, con, manifest)
        finally:
            con.close()
    return Generated(data_dir, records, seed, (datetime.now(UTC) - start).total_seconds())


def export_csv(gen: Generated, path: Path) -> Path:
    """The columns the benchmark queries read, as CSV for SmartNoise's own process."""
    con = duckdb.connect(str(gen.database), read_only=True)
    try:
        con.execute(
            f"COPY (SELECT nhs_number, CAST(arrival_date AS VARCHAR) AS arrival_date, "
            f"age_years, attendance_category, CAST(opted_out AS INTEGER) AS opted_out "
            f"FROM {TABLE}) TO '{path}' (HEADER)"
        )
    finally:
        con.close()
    return path


@dataclass(frozen=True)
class Arrays:
    """In-memory numpy columns for the OpenDP floor: day number since FIRST_DAY, age,
    category code (0..3, 4 = not recorded) and opt-out flag."""

    day: npt.NDArray[np.int64]
    age: npt.NDArray[np.int64]
    category: npt.NDArray[np.int64]
    opted_out: npt.NDArray[np.bool_]


def load_arrays(gen: Generated) -> Arrays:
    con = duckdb.connect(str(gen.database), read_only=True)
    try:
        cols = con.execute(
            f"SELECT CAST(arrival_date - DATE '{FIRST_DAY}' AS BIGINT) AS day, age_years, "
            "CAST(coalesce(CAST(attendance_category AS INTEGER), 5) - 1 AS BIGINT) AS cat, "
            f"opted_out FROM {TABLE}"
        ).fetchnumpy()
    finally:
        con.close()
    return Arrays(
        np.asarray(cols["day"], dtype=np.int64),
        np.asarray(cols["age_years"], dtype=np.int64),
        np.asarray(cols["cat"], dtype=np.int64),
        np.asarray(cols["opted_out"], dtype=np.bool_),
    )


def generate_in_child(data_dir: Path, records: int, seed: int) -> tuple[Generated, float]:
    """`generate` in a fresh Python process (it inherits the data key from the
    environment): the version and the child's peak resident memory in MiB, so the
    build's memory is measured alone."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.data", str(data_dir), str(records), str(seed)],
        check=True,
        capture_output=True,
        text=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return Generated(data_dir, records, seed, float(got["seconds"])), float(got["peak_rss_mb"])


def _main(argv: list[str]) -> None:
    g = generate(Path(argv[0]), int(argv[1]), int(argv[2]))
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork and exec,
    # so a child would report its parent's peak if that were higher.
    peak = stats.peak_rss_mb(os.getpid())["VmHWM"]
    print(json.dumps({"seconds": round(g.seconds, 3), "peak_rss_mb": round(peak, 1)}))


if __name__ == "__main__":
    _main(sys.argv[1:])
