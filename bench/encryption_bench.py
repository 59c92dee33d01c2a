"""What encryption at rest costs: the same dataset version stored as a plain DuckDB
file (the layout before encryption) and sealed (node/storage.py), timed for
publishing, for loading (first connection) and for the node's query.

    python -m bench.encryption_bench --records 1000000 --repeat 5

Prints one JSON object: medians in milliseconds, file sizes and peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from bench.data import _INSERT, TABLE, _create_sql
from tessera import templates
from tessera.node import compiler, storage
from tessera.node.vault import DataKey
from tessera.templates import params as params_mod

TEMPLATE = Path(__file__).parent / "templates" / "ed-attendances-by-age-and-category.toml"
PARAMS = {"period_start": "2020-01-01", "period_end": "2024-12-31"}


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


def _query() -> compiler.CompiledQuery:
    t = templates.load_toml(TEMPLATE.read_text())
    values = params_mod.bind(t, PARAMS)
    return compiler.compile_query(t, values, exclude_opted_out=True, order_key=b"\x07" * 32)


def run(records: int, repeat: int) -> dict[str, Any]:
    key = DataKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        built = duckdb.connect(":memory:")
        built.execute("SET enable_progress_bar = false")
        built.execute(_create_sql())
        built.execute(_INSERT, {"seed": 1, "units": max(records // 2, 1), "n": records})

        plain = root / "v1.duckdb"

        def write_plain() -> None:
            plain.unlink(missing_ok=True)
            built.execute(f"ATTACH '{plain}' AS out")
            built.execute("COPY FROM DATABASE memory TO out")
            built.execute("DETACH out")

        sealed_file = root / "v1.sealed"

        def write_sealed() -> None:
            sealed_file.unlink(missing_ok=True)
            storage.seal_to(sealed_file, built, key, "health", 1, [TABLE])

        publish_plain = _median_ms(write_plain, repeat)
        publish_sealed = _median_ms(write_sealed, repeat)

        def load_plain() -> duckdb.DuckDBPyConnection:
            return duckdb.connect(str(plain), read_only=True)

        def load_sealed() -> duckdb.DuckDBPyConnection:
            return storage.open_sealed(sealed_file, key, "health", 1)

        query = _query()

        def first_answer(load: Callable[[], duckdb.DuckDBPyConnection]) -> None:
            con = load()
            try:
                compiler.run(con.cursor(), query)
            finally:
                con.close()

        load_plain_ms = _median_ms(lambda: load_plain().close(), repeat)
        load_sealed_ms = _median_ms(lambda: load_sealed().close(), repeat)
        first_plain = _median_ms(lambda: first_answer(load_plain), repeat)
        first_sealed = _median_ms(lambda: first_answer(load_sealed), repeat)
        warm = {}
        for name, load in (("plain", load_plain), ("sealed", load_sealed)):
            con = load()
            compiler.run(con.cursor(), query)
            warm[name] = _median_ms(lambda c=con: compiler.run(c.cursor(), query), repeat)
            con.close()
        return {
            "records": records,
            "repeat": repeat,
            "file_mb": {
                "plain": round(plain.stat().st_size / 1e6, 1),
                "sealed": round(sealed_file.stat().st_size / 1e6, 1),
            },
            "publish_ms": {"plain": publish_plain, "sealed": publish_sealed},
            "load_ms": {"plain": load_plain_ms, "sealed": load_sealed_ms},
            "first_answer_ms": {"plain": first_plain, "sealed": first_sealed},
            "warm_query_ms": warm,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.encryption_bench")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.records, args.repeat), indent=2))


if __name__ == "__main__":
    main()
