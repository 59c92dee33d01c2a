"""Ingest throughput: 10^6 SSDA903 episode rows (stacked returns, mixed date forms).

    python -m bench.ingest_throughput [--rows 1000000]

Writes a header file (one row per child per return) and an episodes file with a
YEAR column, every date in one of ISO, DD/MM/YYYY, DD/MM/YY or Excel serial form
and a third of rows duplicated across returns, then times ``ingest_dataset``
(validation, in-memory build, reconciliation, rules, content hash and sealing)
with a fresh data key. Synthetic data only.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from tessera import schemas
from tessera.node import vault
from tessera.node.ingest import ingest_dataset
from tessera.schemas import DATASETS
from tessera.synth.messy import format_date


def write_files(folder: Path, rows: int, seed: int = 1) -> dict[str, list[Path]]:
    rng = np.random.default_rng(seed)  # synthetic data only, never noise
    children = rows // 4
    base = date(2015, 4, 1)
    header = folder / "header.csv"
    episodes = folder / "episodes.csv"
    with header.open("w", newline="") as h, episodes.open("w", newline="") as e:
        hw, ew = csv.writer(h), csv.writer(e)
        hw.writerow([*schemas.column_names("ssda903", "header"), "YEAR"])
        ew.writerow([*schemas.column_names("ssda903", "episodes"), "YEAR"])
        starts = rng.integers(0, 3000, size=rows)
        lengths = rng.integers(1, 700, size=rows)
        forms = rng.integers(0, 4, size=rows)
        places = np.array(["U1", "U2", "U3", "K2", "R1", "H5", "P2"])[rng.integers(0, 7, rows)]
        written = 0
        i = 0
        while written < rows:
            child = f"C{i % children:07d}"
            decom = base + timedelta(days=int(starts[i % rows]))
            dec = decom + timedelta(days=int(lengths[i % rows]))
            year = 2016 + int(starts[i % rows]) // 365
            f = int(forms[i % rows])
            copies = 2 if i % 3 == 0 else 1  # open in one return, closed in the next
            for c in range(copies):
                last = c == copies - 1
                ew.writerow(
                    [
                        child,
                        format_date(decom, f),
                        "S",
                        "C2",
                        "N1",
                        places[i % rows],
                        "PR1",
                        format_date(dec, f) if last else "",
                        "E8" if last else "",
                        "",
                        "",
                        "",
                        "",
                        str(year + c),
                    ]
                )
                written += 1
            if i < children:
                hw.writerow(
                    [
                        child,
                        "1",
                        format_date(date(2008, 1, 1) + timedelta(days=i % 3000), f),
                        "WBRI",
                        "",
                        "",
                        "",
                        str(year),
                    ]
                )
            i += 1
    return {"header": [header], "episodes": [episodes]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key_file = root / "data.key"
        vault.write_key_file(key_file, vault.DataKey.generate())
        os.environ[vault.ENV_KEY_FILE] = str(key_file)
        t0 = time.perf_counter()
        files = write_files(root, args.rows)
        t1 = time.perf_counter()
        report = ingest_dataset(
            DATASETS["ssda903"], files, root / "data", datetime.now(UTC), max_refused_share=1.0
        )
        t2 = time.perf_counter()
        e = report.tables["episodes"]
        print(f"wrote {report.rows_read['episodes']:,} episode rows in {t1 - t0:.1f} s")
        print(
            f"ingest: {t2 - t1:.1f} s ({report.rows_read['episodes'] / (t2 - t1):,.0f} "
            f"episode rows/s); {e.rows_loaded:,} loaded, {e.duplicates_dropped:,} duplicates "
            f"dropped, {e.rows_rejected:,} refused; outcome {report.outcome}"
        )


if __name__ == "__main__":
    main()
