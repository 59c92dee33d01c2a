"""Targets, `bench/results/latest.json` and the generated section of `docs/performance.md`."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

INTRO = """# Performance

How fast a Tessera node and a small federation answer, measured on real processes
talking mutual TLS on loopback, against the targets we set ourselves and against
the tools people would otherwise use. Every figure below comes from one run of
the benchmark harness (`bench/`); run it yourself with the command shown. The
data is synthetic (`health` emergency department attendances generated with
DuckDB); each question asks about a different period, so nothing is served
from a cache unless the cached path is what is being measured.

What each scenario measures:

- **One node**: a signed request to one node process and its reply, through gRPC
  with mutual TLS, the node's signature checks, the DuckDB query with per-person
  bounding, OpenDP noise, the ledger's fsynced commit and the audit append.
- **Against other engines**: the same 25-cell histogram and clamped mean over the
  same records through SmartNoise SQL (in its own virtualenv, timed inside its
  process) and through OpenDP applied to in-memory numpy arrays (the floor).
- **Federation**: an analyst's signed request to a coordinator process that fans
  out to the node processes and combines their answers.
- **Accuracy**: the error of combined answers (each node adds its own noise)
  against one central mechanism with the same privacy loss.

`python -m bench --quick` runs tiny sizes only (CI uses it to check the harness
works; its figures say nothing about the targets). A target that is missed is
reported as missed. Medians (p50) and 95th
percentiles (p95) exclude warm-up runs. These machines are small and shared,
so compare figures within one run rather than across runs.

"""


@dataclass(frozen=True)
class Target:
    figure: str
    target: str
    get: Callable[[dict[str, Any]], float | None]
    ok: Callable[[float], bool]
    unit: str


def _at(key: str, sub: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda r: (r.get(key) or {}).get(sub)


TARGETS = (
    Target(
        "One node, 10^6 records, histogram, p50",
        "≤ 25 ms",
        _at("node_hist_p50_ms", "1000000"),
        lambda v: v <= 25,
        "ms",
    ),
    Target(
        "One node, 10^7 records, histogram, p50",
        "≤ 250 ms",
        _at("node_hist_p50_ms", "10000000"),
        lambda v: v <= 250,
        "ms",
    ),
    Target(
        "One node end to end over the bare DuckDB group-by, 10^6 records",
        "≤ 1.5×",
        lambda r: r.get("node_vs_bare_duckdb"),
        lambda v: v <= 1.5,
        "×",
    ),
    Target(
        "Growth: 10^7 records' time over 10^6 records' time",
        "≤ 11×",
        lambda r: r.get("node_growth_1e7_over_1e6"),
        lambda v: v <= 11,
        "×",
    ),
    Target(
        "Tessera end to end over OpenDP on numpy (the library floor), same query",
        "≤ 1×",
        lambda r: r.get("opendp_numpy_ratio"),
        lambda v: v <= 1,
        "×",
    ),
    Target(
        "Speed against SmartNoise SQL, same query, same data",
        "≥ 50× faster",
        lambda r: r.get("smartnoise_speedup"),
        lambda v: v >= 50,
        "×",
    ),
    Target(
        "Federation of 8 × 10^6 records, p50",
        "≤ 60 ms",
        _at("federation_p50_ms", "8"),
        lambda v: v <= 60,
        "ms",
    ),
    Target(
        "Throughput, 8 concurrent analysts (8 × 10^6 federation)",
        "≥ 20 queries/s",
        lambda r: r.get("federation_qps"),
        lambda v: v >= 20,
        "queries/s",
    ),
    Target(
        "That throughput over the machine's limit (cores ÷ all nodes' CPU per query)",
        "≥ 0.8",
        lambda r: r.get("federation_qps_vs_limit"),
        lambda v: v >= 0.8,
        "",
    ),
    Target(
        "Cached path (one node, 8 concurrent clients)",
        "≥ 1,000 queries/s",
        lambda r: r.get("cached_qps"),
        lambda v: v >= 1000,
        "queries/s",
    ),
    Target(
        "Node peak RSS, 10^7 records",
        "≤ 500 MiB",
        lambda r: (
            r.get("node_peak_rss_mb") if "10000000" in r.get("node_hist_p50_ms", {}) else None
        ),
        lambda v: v <= 500,
        "MiB",
    ),
    Target(
        "Overlap, 10^5 x 10^6 identifiers, speed against OpenMined PSI",
        "≥ 2× faster",
        lambda r: r.get("overlap_speedup_vs_openmined_psi"),
        lambda v: v >= 2,
        "×",
    ),
    Target(
        "Overlap, four agencies of 10^5 identifiers",
        "≤ 60 s",
        lambda r: r.get("overlap_four_agencies_s"),
        lambda v: v <= 60,
        "s",
    ),
)


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with what was measured and whether it was met (None: not measured)."""
    out = []
    for t in TARGETS:
        value = t.get(result)
        measured = value is not None and not math.isnan(value)
        met = t.ok(value) if value is not None and measured and result["mode"] == "full" else None
        out.append(
            {
                "figure": t.figure,
                "target": t.target,
                "measured": value if measured else None,
                "unit": t.unit,
                "met": met,
            }
        )
    return out


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _num(v: Any, unit: str = "") -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"
    else:
        text = f"{v:,}"
    return f"{text} {unit}".strip()


def _met(m: bool | None) -> str:
    return "n/a" if m is None else "**yes**" if m else "**MISSED**"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(result: dict[str, Any]) -> str:
    d = result["details"]
    lines = [f"Run of {result['started_at']} ({result['mode']}), {result['duration_s']:.0f} s.", ""]
    lines += _table(
        ["figure", "target", "measured", "met?"],
        [
            [t["figure"], t["target"], _num(t["measured"], t["unit"]), _met(t["met"])]
            for t in result["targets"]
        ],
    )
    node = d.get("node", {}).get("by_size", {})
    if node:
        lines += ["", "**One node, histogram (25 cells), end to end**", ""]
        rows = []
        for n, r in node.items():
            h = r["histogram"]
            rows.append(
                [
                    f"{int(n):,}",
                    _num(h["p50_ms"], "ms"),
                    _num(h["p95_ms"], "ms"),
                    str(h["n"]),
                    _num(h["in_process_duckdb"]["p50_ms"], "ms"),
                    _num(h.get("bare_duckdb", {}).get("p50_ms"), "ms"),
                    _num(h["node_cpu_ms_per_query"], "ms"),
                    _num(r["rss_mb"]["VmHWM"], "MiB"),
                ]
            )
        lines += _table(
            [
                "records",
                "p50",
                "p95",
                "runs",
                "the node's DuckDB query alone, p50",
                "bare DuckDB group-by, p50",
                "node CPU per query",
                "node peak RSS",
            ],
            rows,
        )
        for n, r in node.items():
            if "mean" in r:
                m, c = r["mean"], r["cached"]
                lines += [
                    "",
                    f"Clamped mean over {int(n):,} records: p50 {_num(m['p50_ms'], 'ms')}, "
                    f"p95 {_num(m['p95_ms'], 'ms')}. Cached path: {_num(c['qps'])} queries/s "
                    f"with {c['concurrency']} concurrent clients "
                    f"(p50 {_num(c['under_load']['p50_ms'], 'ms')} under load; "
                    f"{_num(c['sequential']['p50_ms'], 'ms')} one at a time).",
                ]
    ingest = d.get("ingest", {})
    if ingest:
        lines += [
            "",
            "**Building and sealing a version** (the benchmark's synthetic rows, made with "
            "DuckDB SQL, then sealed as ingest publishes them; in a process of its own)",
            "",
        ]
        lines += _table(
            ["records", "time", "peak RSS"],
            [
                [f"{int(n):,}", _num(float(g["seconds"]), "s"), _num(g["peak_rss_mb"], "MiB")]
                for n, g in ingest.items()
            ],
        )
    growth = [
        f"{label}: {_num(result.get(key), '×')}"
        for label, key in (
            ("10^6 over 10^5", "node_growth_1e6_over_1e5"),
            ("10^7 over 10^6", "node_growth_1e7_over_1e6"),
        )
        if result.get(key) is not None
    ]
    if growth:
        lines += [
            "",
            "How a node's time grows with its records (p50 end to end): " + "; ".join(growth) + ".",
        ]
    eng = d.get("engines")
    if eng:
        lines += ["", f"**Same queries, same {eng['records']:,} records**", ""]
        rows = []
        for label, key in (
            ("Tessera node (end to end)", "tessera"),
            ("SmartNoise SQL", "smartnoise"),
        ):
            e = eng.get(key)
            if e:
                rows.append(
                    [label, _num(e["histogram"]["p50_ms"], "ms"), _num(e["mean"]["p50_ms"], "ms")]
                )
            else:
                rows.append([label, "skipped", "skipped"])
        f = eng.get("opendp_numpy")
        if f:
            rows.append(
                [
                    "OpenDP on numpy (floor)",
                    _num(f["histogram"]["p50_ms"], "ms"),
                    _num(f["mean"]["p50_ms"], "ms"),
                ]
            )
        lines += _table(["engine", "histogram p50", "clamped mean p50"], rows)
        for note in eng.get("notes", []):
            lines += ["", f"- {note}"]
    fed = d.get("federation")
    if fed:
        lines += [
            "",
            f"**Federation: a coordinator process and N node processes, "
            f"{fed['records']:,} records each**",
            "",
        ]
        rows = []
        for n, lat in fed["latency"].items():
            acc = fed["accuracy"].get(n, {})
            rows.append(
                [
                    n,
                    _num(lat["p50_ms"], "ms"),
                    _num(lat["p95_ms"], "ms"),
                    str(lat["n"]),
                    _num(lat["nodes_cpu_ms_per_query"], "ms"),
                    _num(lat["coordinator_cpu_ms_per_query"], "ms"),
                    _num(acc.get("ratio")),
                    _num(acc.get("expected_sqrt_n")),
                ]
            )
        lines += _table(
            [
                "nodes",
                "p50",
                "p95",
                "runs",
                "CPU, all nodes, per query",
                "CPU, coordinator, per query",
                "error vs central",
                "√N (expected)",
            ],
            rows,
        )
        for n, tp in fed["throughput"].items():
            lines += [
                "",
                f"Throughput over {n} node(s): {_num(tp['qps'])} queries/s with "
                f"{tp['analysts']} concurrent analysts ({tp['queries']} queries, p50 "
                f"{_num(tp['latency']['p50_ms'], 'ms')}).",
            ]
        if result.get("federation_qps_machine_limit") is not None:
            lines += [
                "",
                f"The machine's limit for that throughput (its {result['machine']['cores']} "
                "cores over all the nodes' CPU per query): "
                f"{_num(result['federation_qps_machine_limit'])} queries/s; measured over "
                f"limit: {_num(result.get('federation_qps_vs_limit'))}.",
            ]
    ov = d.get("overlap")
    if ov:  # bench/overlap_bench.py
        two, four, om = ov["two"], ov["four"], ov.get("openmined_psi")
        lines += ["", "**Overlap: private set intersection cardinality, ε = 1, noise on**", ""]
        rows = [
            [
                "Tessera, 2 agencies",
                " × ".join(f"{n:,}" for n in two["sizes"]),
                _num(two["seconds"], "s"),
                " + ".join(_num(c, "s") for c in two["party_cpu_s"]),
            ],
            ["OpenMined PSI", " × ".join(f"{n:,}" for n in two["sizes"]), "skipped", ""],
            [
                "Tessera, 4 agencies, at least 3 of 4",
                " × ".join(f"{n:,}" for n in four["sizes"]),
                _num(four["seconds"], "s"),
                " + ".join(_num(c, "s") for c in four["party_cpu_s"]),
            ],
        ]
        if om:
            rows[1][2:] = [_num(om["seconds"], "s"), _num(om.get("cpu_s"), "s")]
        lines += _table(["engine", "identifiers", "wall time", "CPU (per party)"], rows)
        if ov.get("overlap_cpu_speedup_vs_openmined_psi") is not None:
            lines += [
                "",
                "OpenMined PSI's CPU time over the busiest Tessera party's (the speed-up with "
                "each party on a machine of its own): "
                f"{_num(ov['overlap_cpu_speedup_vs_openmined_psi'], '×')}.",
            ]
        for note in ov.get("notes", []):
            lines += ["", f"- {note}"]
    m = result["machine"]
    v = m["versions"]
    lines += [
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_mb'] / 1024:.1f} GiB memory, "
        f"{m['platform']}. While the benchmark ran, other processes on this machine kept "
        f"{result['other_processes_cores']} cores busy on average; the load average (1, 5, "
        f"15 min) was {result['load_average']['start']} at the start. A small write's fsync "
        f"took {result['fsync_ms']['start']['p50_ms']} ms p50 / "
        f"{result['fsync_ms']['start']['p95_ms']} ms p95 at the start.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        f"Command: `{result['command']}`",
    ]
    for note in result.get("notes", []):
        lines += ["", f"- {note}"]
    return "\n".join(lines)


def write_docs(result: dict[str, Any], path: Path) -> None:
    """Rewrite the marked section, keeping whatever surrounds it."""
    section = f"{BEGIN}\n{markdown(result)}\n{END}"
    if path.exists():
        text = path.read_text(encoding="utf-8")
        pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _: section, text)
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        text = INTRO + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
