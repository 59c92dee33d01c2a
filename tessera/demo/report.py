"""The demo's printed summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from tessera.demo.drills import DrillResult


def _cells_table(title: str, cells: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    dims = list(cells[0]["key"]) if cells else []
    for d in dims:
        table.add_column(d)
    table.add_column("estimate", justify="right")
    table.add_column("interval (coverage)", justify="right")
    for c in cells:
        est = "suppressed" if c.get("suppressed") else f"{c['estimate']:g}"
        lo, hi = c["ci95"]
        # Each interval covers the truth at least 95% of the time; the exact level is shown.
        cover = f" ({c['coverage']:.1%})" if c.get("coverage") is not None else ""
        table.add_row(*[str(c["key"][d]) for d in dims], est, f"{lo:g} to {hi:g}{cover}")
    return table


def render(
    console: Console,
    summary: Mapping[str, Any],
    drills: Sequence[DrillResult],
    setup: Sequence[DrillResult],
    rejected: Mapping[str, int],
    scale: float,
) -> None:
    console.rule("Tessera demo: summary")
    nodes = Table(title="Nodes (each holds only its own records)", title_justify="left")
    nodes.add_column("organisation")
    nodes.add_column("datasets")
    nodes.add_column("rows refused at ingest", justify="right")
    for n in summary["nodes"]:
        nodes.add_row(
            n["organisation"], ", ".join(n["datasets"]), str(rejected.get(n["organisation"], 0))
        )
    console.print(nodes)
    for q in summary["queries"]:
        spent = ", ".join(f"{k} {v:g}" for k, v in q["privacy_spent"].items())
        console.print(
            f"\n[bold]{q['template']}[/bold] ({q['mode']}): answered by "
            f"{', '.join(q['nodes_answered']) or 'no node'}; missing: "
            f"{', '.join(q['nodes_missing']) or 'none'}; privacy spent per node: {spent}"
        )
        if q["mode"] == "per_node" and q.get("per_node"):
            for part in q["per_node"][:2]:
                console.print(_cells_table(f"  {part['organisation']}", part["cells"][:8]))
            console.print(f"  … and {len(q['per_node']) - 2} more organisations")
        else:
            console.print(_cells_table("", q["cells"][:12]))
            if len(q["cells"]) > 12:
                console.print(f"  … {len(q['cells']) - 12} more cells (all in --json)")
    table = Table(title="\nSecurity drill", title_justify="left")
    for col in ("drill", "refused with", "budget spent", "why"):
        table.add_column(col)
    for d in drills:
        table.add_row(d.name, d.status, f"{d.budget_spent:g}", d.detail)
    console.print(table)
    if setup:
        setup_spent = sum(s.budget_spent for s in setup)
        console.print(
            f"(The budget drill first spent ε {setup_spent:g} of the police node's "
            "budget on distinct questions.)"
        )
    console.print(
        f"\nThe region was synthesised at scale {scale} of about 500,000 children. "
        "Figures are noisy by design; every cell carries an interval that covers the "
        "truth at least 95% of the time, with its exact level."
    )
