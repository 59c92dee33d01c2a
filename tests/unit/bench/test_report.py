"""The benchmark's headline figures and target verdicts (bench/__main__.py, bench/report.py):
derived from the measured details, never flattering, and a target missed is reported
missed. No timing here: the figures are made up, the arithmetic is what is checked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench import report
from bench.__main__ import headline


def _summary(p50: float) -> dict[str, Any]:
    return {"p50_ms": p50, "p95_ms": p50, "n": 3}


def _details() -> dict[str, Any]:
    def size(p50: float, bare: float) -> dict[str, Any]:
        return {
            "histogram": {
                **_summary(p50),
                "in_process_duckdb": _summary(p50 * 0.9),
                "bare_duckdb": _summary(bare),
                "node_cpu_ms_per_query": p50,
            },
            "rss_mb": {"idle": 100.0, "VmHWM": 400.0, "VmRSS": 300.0},
        }

    node = {"100000": size(4.0, 2.0), "1000000": size(30.0, 20.0), "10000000": size(360.0, 200.0)}
    node["1000000"]["mean"] = _summary(40.0)
    node["1000000"]["cached"] = {
        "qps": 1200.0,
        "concurrency": 8,
        "requests": 10,
        "sequential": _summary(1.0),
        "under_load": _summary(6.0),
    }
    fed = {
        "records": 10**6,
        "latency": {
            "8": {
                **_summary(50.0),
                "nodes_cpu_ms_per_query": 100.0,
                "coordinator_cpu_ms_per_query": 5.0,
            }
        },
        "throughput": {"8": {"qps": 16.0, "analysts": 8, "queries": 24, "latency": _summary(9)}},
        "accuracy": {"8": {"ratio": 2.8, "expected_sqrt_n": 2.83}},
    }
    engines = {
        "records": 10**6,
        "smartnoise_speedup": {"histogram": 80.0, "mean": 45.0},
        "opendp_numpy_ratio": {"histogram": 0.9, "mean": 1.2},
    }
    ingest = {"1000000": {"seconds": 2.0, "peak_rss_mb": 150.0}}
    return {"node": {"by_size": node}, "federation": fed, "engines": engines, "ingest": ingest}


def _result() -> dict[str, Any]:
    return {"mode": "full", **headline(_details())}


def test_headline_ratios_come_from_the_measured_details() -> None:
    h = headline(_details())
    assert h["node_vs_bare_duckdb"] == 1.5
    assert h["node_growth_1e7_over_1e6"] == 12.0
    assert h["node_growth_1e6_over_1e5"] == 7.5
    # Cores over the nodes' total CPU per query (0.1 s): the machine's limit.
    cores = os.cpu_count() or 1
    assert h["federation_qps_machine_limit"] == round(cores / 0.1, 2)
    assert h["federation_qps_vs_limit"] == round(16.0 / (cores / 0.1), 2)
    # The worse of histogram and mean, both ways.
    assert h["smartnoise_speedup"] == 45.0
    assert h["opendp_numpy_ratio"] == 1.2
    assert h["node_peak_rss_mb"] == 400.0
    assert h["ingest"]["1000000"]["seconds"] == 2.0


def test_targets_report_met_and_missed() -> None:
    verdicts = {t["figure"]: t["met"] for t in report.evaluate(_result())}
    assert verdicts["One node, 10^6 records, histogram, p50"] is False  # 30 > 25
    assert verdicts["One node end to end over the bare DuckDB group-by, 10^6 records"] is True
    assert verdicts["Growth: 10^7 records' time over 10^6 records' time"] is False  # 12 > 11
    assert verdicts["Speed against SmartNoise SQL, same query, same data"] is False  # 45 < 50
    assert verdicts["Federation of 8 × 10^6 records, p50"] is True
    assert verdicts["Throughput, 8 concurrent analysts (8 × 10^6 federation)"] is False
    assert verdicts["Cached path (one node, 8 concurrent clients)"] is True
    assert verdicts["Node peak RSS, 10^7 records"] is True


def test_quick_runs_judge_nothing_and_unmeasured_figures_stay_unmeasured() -> None:
    quick = {**_result(), "mode": "quick"}
    assert all(t["met"] is None for t in report.evaluate(quick))
    empty = {"mode": "full", **headline({})}
    for t in report.evaluate(empty):
        assert t["measured"] is None and t["met"] is None


def test_docs_section_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    result = {
        **_result(),
        "started_at": "2026-12-01T00:00:00+00:00",
        "duration_s": 1.0,
        "command": "python -m bench",
        "machine": {"cores": 2, "cpu": "x", "memory_mb": 1024.0, "platform": "p", "versions": {}},
        "other_processes_cores": 0.0,
        "load_average": {"start": [0.0, 0.0, 0.0]},
        "fsync_ms": {"start": {"p50_ms": 0.1, "p95_ms": 0.2}},
        "details": _details(),
        "notes": [],
    }
    result["targets"] = report.evaluate(result)
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Mine\n\n{report.BEGIN}\nold\n{report.END}\n\n## Ingest\n\nkept\n")
    report.write_docs(result, doc)
    text = doc.read_text()
    assert text.startswith("# Mine\n") and text.endswith("## Ingest\n\nkept\n")
    assert "old" not in text
    assert "| Node peak RSS, 10^7 records | ≤ 500 MiB | 400 MiB | **yes** |" in text
    assert "**MISSED**" in text
    assert "measured over limit" in text
