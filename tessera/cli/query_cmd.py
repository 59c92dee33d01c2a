"""`tessera query run|list|show`, `tessera budget` and `tessera nodes`: an analyst's commands.

`query run` exits 0 when the result is released, 3 when it is withheld (below the
template's quorum), 1 when refused and 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from tessera.cli.remote import UsageError, add_connection_args, connect, handles_errors
from tessera.client import Cell, NodeReport, QueryResult
from tessera.client import Progress as NodeProgress
from tessera.templates.model import IntParam, Template

EXIT_WITHHELD = 3


def register(sub: Any) -> None:
    q = sub.add_parser("query", help="run approved queries across the nodes")
    q_sub = q.add_subparsers(dest="query_command", required=True, metavar="COMMAND")

    run = q_sub.add_parser(
        "run",
        help="run a published template with your parameters",
        description="Sign a request for TEMPLATE (id or digest) and run it on every node "
        "hosting its dataset, or on the --node organisations. Exit 0 when released, 3 when "
        "withheld below the template's quorum.",
    )
    run.add_argument("template", metavar="TEMPLATE", help="template id or digest")
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter value; repeat for each parameter",
    )
    run.add_argument("--mode", choices=("combined", "per_node"), default="combined")
    run.add_argument(
        "--node",
        action="append",
        metavar="ORG",
        help="ask only this organisation's node; repeatable",
    )
    run.add_argument("--json", type=Path, metavar="PATH", help="also write the result as JSON")
    run.add_argument("--csv", type=Path, metavar="PATH", help="also write the cells as CSV")
    run.add_argument(
        "--lifetime-minutes",
        type=int,
        default=10,
        metavar="N",
        help="how long the signed request stays valid (default 10)",
    )
    add_connection_args(run)
    run.set_defaults(handler=_run)

    ls = q_sub.add_parser("list", help="your past queries, newest first")
    ls.add_argument("--limit", type=int, default=20)
    add_connection_args(ls)
    ls.set_defaults(handler=_list)

    show = q_sub.add_parser("show", help="a past query's result")
    show.add_argument("query_id", metavar="QUERY_ID")
    show.add_argument("--json", type=Path, metavar="PATH")
    show.add_argument("--csv", type=Path, metavar="PATH")
    add_connection_args(show)
    show.set_defaults(handler=_show)

    budget = sub.add_parser("budget", help="privacy budget spent and left on every node")
    add_connection_args(budget)
    budget.set_defaults(handler=_budget)

    nodes = sub.add_parser("nodes", help="the nodes the coordinator routes to, and their health")
    add_connection_args(nodes)
    nodes.set_defaults(handler=_nodes)


def parse_params(template: Template, pairs: list[str]) -> dict[str, Any]:
    """NAME=VALUE pairs, typed by the template's parameter slots (the coordinator and
    every node check the values against their domains)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--param {pair!r}: expected NAME=VALUE")
        slot = template.parameter(name)
        if slot is None:
            names = ", ".join(p.name for p in template.parameters) or "none"
            raise UsageError(f"--param {name}: the template's parameters are: {names}")
        if isinstance(slot, IntParam):
            try:
                out[name] = int(value)
            except ValueError:
                raise UsageError(f"--param {name}: must be an integer") from None
        else:
            out[name] = value
    return out


@handles_errors
def _run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    console = Console()
    with connect(args, environ, signing=True) as client:
        info = client.resolve_template(args.template)
        params = parse_params(info.template, args.param)
        console.print(f"[bold]{escape(info.id)}[/bold] v{info.version}: {escape(info.title)}")
        with Progress(
            SpinnerColumn(),
            TextColumn("nodes answering"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("nodes", total=None)

            def progress(p: NodeProgress) -> None:
                bar.update(task, total=p.total, completed=p.done)
                bar.console.print(_node_line(p.node))

            result = client.run_query(
                info.digest,
                params,
                mode=args.mode,
                nodes=args.node,
                on_progress=progress,
                lifetime=timedelta(minutes=args.lifetime_minutes),
            )
    return _report(console, result, args.json, args.csv)


@handles_errors
def _show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    console = Console()
    with connect(args, environ, signing=False) as client:
        q = client.get_query(args.query_id)
    console.print(
        f"query {escape(q.query_id)} by {escape(q.analyst)} at {q.submitted_at}: {q.state}"
    )
    if q.result is None:
        return 0
    return _report(console, q.result, args.json, args.csv)


@handles_errors
def _list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=False) as client:
        queries = client.list_queries(args.limit)
    table = Table(title="Your queries")
    for col in ("submitted", "query id", "template", "mode", "state", "nodes"):
        table.add_column(col, no_wrap=col in ("query id", "template"))
    for q in queries:
        r = q.result
        table.add_row(
            q.submitted_at,
            q.query_id,
            r.template if r else "",
            r.mode if r else "",
            q.state,
            f"{len(r.nodes_answered)}/{len(r.nodes)}" if r else "",
        )
    Console().print(table)
    return 0


@handles_errors
def _budget(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=False) as client:
        budgets = client.budgets()
    table = Table(title="Privacy budget by node")
    for col in ("node", "status", "dataset", "version", "measure", "total", "spent", "left"):
        table.add_column(col, justify="right" if col in ("total", "spent", "left") else "left")
    for n in budgets:
        if not n.datasets:
            table.add_row(n.organisation, _status(n.status), "", "", "", "", "", "")
        for d in n.datasets:
            table.add_row(
                n.organisation,
                _status(n.status),
                d.name,
                str(d.version),
                d.kind,
                f"{d.total:g}",
                f"{d.spent:.6g}",
                f"{d.remaining:.6g}",
            )
    Console().print(table)
    return 0


@handles_errors
def _nodes(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=False) as client:
        nodes = client.nodes()
    table = Table(title="Nodes")
    for col in ("organisation", "address", "datasets", "health", "detail"):
        table.add_column(col)
    for n in nodes:
        health = "[green]SERVING[/green]" if n.health == "SERVING" else f"[red]{n.health}[/red]"
        table.add_row(
            escape(n.organisation), n.address, ", ".join(n.datasets), health, escape(n.detail)
        )
    Console().print(table)
    return 0


# -- rendering -------------------------------------------------------------------------


def _status(status: str) -> str:
    return "[green]OK[/green]" if status == "OK" else f"[red]{escape(status)}[/red]"


def _node_line(n: NodeReport) -> str:
    mark = "[green]✓[/green]" if n.status == "OK" else "[red]✗[/red]"
    detail = f": {escape(n.message)}" if n.message else ""
    return f"  {mark} {escape(n.organisation)} {_status(n.status)}{detail} ({n.latency_ms:.0f} ms)"


def _cells_table(title: str, dims: list[str], cells: list[Cell]) -> Table:
    table = Table(title=title)
    for d in dims:
        table.add_column(d)
    table.add_column("estimate", justify="right")
    table.add_column("95% interval", justify="right")
    for c in cells:
        est = "suppressed" if c.suppressed else f"{c.estimate:g}"
        table.add_row(*(escape(c.key[d]) for d in dims), est, f"{c.ci95[0]:g} – {c.ci95[1]:g}")
    return table


def _report(console: Console, r: QueryResult, json_path: Path | None, csv_path: Path | None) -> int:
    spent = ", ".join(f"{k}={v:g}" for k, v in r.privacy_spent.items())
    if r.released:
        console.print(_cells_table(f"{r.template} ({r.mode})", r.dimensions, r.cells))
        for org, cells in sorted((r.per_node or {}).items()):
            console.print(_cells_table(f"{org} alone", r.dimensions, cells))
        console.print(f"nodes contributing: {escape(', '.join(r.nodes_answered))}")
    else:
        console.print(f"[red]withheld[/red]: {escape(r.withheld_reason)}")
    for org, why in r.nodes_missing.items():
        console.print(f"[yellow]missing[/yellow] {escape(org)}: {escape(why)}")
    console.print(f"privacy spent on each node's ledger: {spent}; query id {r.query_id}")
    if json_path is not None:
        json_path.write_text(json.dumps(r.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    if csv_path is not None:
        r.to_csv(csv_path)
    return 0 if r.released else EXIT_WITHHELD
