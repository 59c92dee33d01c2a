"""Runs SmartNoise SQL queries and times them, inside SmartNoise's own virtualenv.

Not part of the `bench` package's imports: `python smartnoise_runner.py spec.json`
is started by bench.engines with the venv's interpreter, which has smartnoise-sql
(and its pinned opendp<0.15) but not Tessera. The spec names a CSV file, the
SmartNoise metadata and, per query, the ε of each aggregate and a list of SQL
texts; the first `warmup` of each list are run but not timed. Prints one JSON line.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import time
from typing import Any


def main(spec_path: str) -> int:
    import pandas as pd  # type: ignore[import-untyped]
    import snsql  # type: ignore[import-not-found]
    from snsql import Privacy

    with open(spec_path, encoding="utf-8") as f:
        spec: dict[str, Any] = json.load(f)
    start = time.perf_counter()
    df = pd.read_csv(spec["csv"], dtype=spec["dtypes"], keep_default_na=True)
    load_s = time.perf_counter() - start
    out: dict[str, Any] = {
        "smartnoise_sql": importlib.metadata.version("smartnoise-sql"),
        "opendp": importlib.metadata.version("opendp"),
        "pandas": importlib.metadata.version("pandas"),
        "rows": len(df),
        "csv_load_s": round(load_s, 3),
        "queries": {},
    }
    warmup = int(spec["warmup"])
    readers: dict[float, Any] = {}  # one per ε: loading the frame into SQLite is slow
    for name, q in spec["queries"].items():
        eps = float(q["epsilon"])
        start = time.perf_counter()
        if eps not in readers:
            privacy = Privacy(epsilon=eps, delta=0.0)
            readers[eps] = snsql.from_df(df, privacy=privacy, metadata=spec["metadata"])
        reader = readers[eps]
        setup_s = time.perf_counter() - start
        samples = []
        rows: Any = None
        for i, sql in enumerate(q["sql"]):
            start = time.perf_counter()
            rows = reader.execute(sql)
            ms = (time.perf_counter() - start) * 1000
            if i >= warmup:
                samples.append(ms)
        cost = reader.get_privacy_cost(q["sql"][0])
        out["queries"][name] = {
            "samples_ms": [round(x, 3) for x in samples],
            "warmup": warmup,
            "reader_setup_s": round(setup_s, 3),
            "privacy_cost": [float(x) for x in cost],
            "result_rows": len(rows) - 1 if rows is not None else 0,
        }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
