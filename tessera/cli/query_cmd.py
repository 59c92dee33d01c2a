"""`tessera query run|list|show|report`, `tessera budget` and `tessera nodes`: an
analyst's commands.

Exit codes (docs/analysts.md has the table): 0 released or done, 1 refused by the
coordinator or a node, 2 a usage error, 3 withheld below the template's quorum.
Every listing or showing command takes `--json PATH`, with `-` for standard output.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from tessera import notebook, requests
from tessera.cli.output import add_json_arg, console, json_to_stdout, print_table, write_json
from tessera.cli.remote import UsageError, add_connection_args, connect, handles_errors
from tessera.client import Cell, Client, ClientError, NodeReport, QueryInfo, QueryResult
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
    # No --mode: secure_aggregation where the template allows it, overlap for an overlap
    # template (tessera.client.run_query).
    run.add_argument(
        "--mode", choices=("combined", "per_node", "secure_aggregation", "overlap"), default=None
    )
    run.add_argument(
        "--node",
        action="append",
        metavar="ORG",
        help="ask only this organisation's node; repeatable (overlap: one per dataset, in "
        "the template's dataset order)",
    )
    add_json_arg(run, "the result")
    run.add_argument("--csv", type=Path, metavar="PATH", help="also write the cells as CSV")
    run.add_argument("--html", type=Path, metavar="PATH", help="also write the HTML report")
    run.add_argument(
        "--lifetime-minutes",
        type=int,
        default=10,
        metavar="N",
        help="how long the signed request stays valid (default 10)",
    )
    _add_trust(run)
    add_connection_args(run)
    run.set_defaults(handler=_run)

    ls = q_sub.add_parser("list", help="your past queries, newest first")
    ls.add_argument("--limit", type=int, default=20)
    add_json_arg(ls, "the list")
    add_connection_args(ls)
    ls.set_defaults(handler=_list)

    show = q_sub.add_parser("show", help="a past query's result")
    show.add_argument("query_id", metavar="QUERY_ID")
    add_json_arg(show, "the result")
    show.add_argument("--csv", type=Path, metavar="PATH")
    show.add_argument("--html", type=Path, metavar="PATH", help="also write the HTML report")
    _add_trust(show)
    add_connection_args(show)
    show.set_defaults(handler=_show)

    report = q_sub.add_parser(
        "report",
        help="write a past query's result as one self-contained HTML page",
        description="A page fit to attach to a board paper: the question with its template "
        "and parameters, a chart and a table with intervals, which organisations took part "
        "and which were missing, whether every part verified, the privacy spent, and how to "
        "read it. The page loads nothing from anywhere.",
    )
    report.add_argument("query_id", metavar="QUERY_ID")
    report.add_argument("--html", type=Path, required=True, metavar="FILE")
    _add_trust(report)
    add_connection_args(report)
    report.set_defaults(handler=_report_cmd)

    check = q_sub.add_parser(
        "verify",
        help="check a past query's result against the nodes' signed answers",
        description="Checks each node's signed answer statement with the node keys in "
        'TRUST_FILE (--trust or TESSERA_TRUST: JSON {"nodes": {organisation: "ed25519:..."}}'
        ", or approver keys and a roster they signed; from your federation, never from "
        "the coordinator), that each answers your signed request, "
        "and recomputes the figures when the template permits a per-node breakdown. "
        "Exit 0 when it verifies, 1 when it does not (each failure names the node and "
        "the part).",
    )
    check.add_argument("query_id", metavar="QUERY_ID")
    add_json_arg(check, "the verification outcome")
    _add_trust(check)
    add_connection_args(check)
    check.set_defaults(handler=_verify_cmd)

    budget = sub.add_parser("budget", help="privacy budget spent and left on every node")
    add_json_arg(budget, "the budgets")
    add_connection_args(budget)
    budget.set_defaults(handler=_budget)

    nodes = sub.add_parser("nodes", help="the nodes the coordinator routes to, and their health")
    add_json_arg(nodes, "the nodes")
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
    con = console(environ, args)
    with connect(args, environ, signing=True) as client:
        info = client.resolve_template(args.template)
        params = parse_params(info.template, args.param)
        con.print(f"[bold]{escape(info.id)}[/bold] v{info.version}: {escape(info.title)}")
        with Progress(
            SpinnerColumn(),
            TextColumn("nodes answering"),
            BarColumn(),
            MofNCompleteColumn(),
            console=con,
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
        if args.html is not None:
            _write_report(con, args.html, result, info.template, result.params)
    return _report(con, args, result)


@handles_errors
def _show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    con = console(environ, args)
    with connect(args, environ, signing=False) as client:
        q = _verified(client, client.get_query(args.query_id))
        template = _template_of(client, q.result) if args.html and q.result else None
    con.print(f"query {escape(q.query_id)} by {escape(q.analyst)} at {q.submitted_at}: {q.state}")
    if q.result is None:
        write_json(args, _query_json(q))
        return 0
    if args.html is not None:
        _write_report(con, args.html, q.result, template, params_of(q), q)
    return _report(con, args, q.result, q)


@handles_errors
def _report_cmd(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    con = console(environ)
    with connect(args, environ, signing=False) as client:
        q = _verified(client, client.get_query(args.query_id))
        if q.result is None:
            raise UsageError(f"query {q.query_id} has no result yet ({q.state})")
        template = _template_of(client, q.result)
    _write_report(con, args.html, q.result, template, params_of(q), q)
    return 0


@handles_errors
def _verify_cmd(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=False) as client:
        if client.trust is None:
            raise UsageError("give the node keys to trust: --trust FILE or TESSERA_TRUST")
        result = client.verify_query(args.query_id)
    out = sys.stderr if json_to_stdout(args) else sys.stdout
    print(result.summary(), file=out)
    for note in result.notes:
        print(f"note: {note}", file=out)
    write_json(
        args,
        {
            "query_id": args.query_id,
            "ok": result.ok,
            "summary": result.summary(),
            "nodes_verified": list(result.nodes),
            "recomputed": result.recomputed,
            "problems": [
                {"node": p.node, "part": p.part, "message": p.message} for p in result.problems
            ],
            "notes": list(result.notes),
        },
    )
    return 0 if result.ok else 1


@handles_errors
def _list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=False) as client:
        queries = client.list_queries(args.limit)
    rows = []
    for q in queries:
        r = q.result
        rows.append(
            [
                q.submitted_at,
                q.query_id,
                escape(r.template) if r else "",
                r.mode if r else "",
                q.state,
                f"{len(r.nodes_answered)}/{len(r.nodes)}" if r else "",
            ]
        )
    cols = ("submitted", "query id", "template", "mode", "state", "nodes")
    print_table(console(environ, args), "Your queries", cols, rows, no_wrap=("query id",))
    write_json(args, [_query_json(q, cells=False) for q in queries])
    return 0


@handles_errors
def _budget(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=False) as client:
        budgets = client.budgets()
    rows = []
    for n in budgets:
        if not n.datasets:
            rows.append([escape(n.organisation), _status(n.status), "", "", "", "", "", ""])
        for d in n.datasets:
            rows.append(
                [
                    escape(n.organisation),
                    _status(n.status),
                    escape(d.name),
                    str(d.version),
                    d.kind,
                    f"{d.total:g}",
                    f"{d.spent:.6g}",
                    f"{d.remaining:.6g}",
                ]
            )
    cols = ("node", "status", "dataset", "version", "measure", "total", "spent", "left")
    print_table(
        console(environ, args),
        "Privacy budget by node",
        cols,
        rows,
        right=("total", "spent", "left"),
    )
    write_json(
        args,
        [
            {
                "organisation": n.organisation,
                "status": n.status,
                "datasets": [
                    {
                        "name": d.name,
                        "version": d.version,
                        "measure": d.kind,
                        "total": d.total,
                        "spent": d.spent,
                        "remaining": d.remaining,
                    }
                    for d in n.datasets
                ],
            }
            for n in budgets
        ],
    )
    return 0


@handles_errors
def _nodes(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=False) as client:
        nodes = client.nodes()
    rows = []
    for n in nodes:
        health = "[green]SERVING[/green]" if n.health == "SERVING" else f"[red]{n.health}[/red]"
        rows.append(
            [escape(n.organisation), n.address, ", ".join(n.datasets), health, escape(n.detail)]
        )
    cols = ("organisation", "address", "datasets", "health", "detail")
    print_table(console(environ, args), "Nodes", cols, rows)
    write_json(
        args,
        [
            {
                "organisation": n.organisation,
                "address": n.address,
                "identity": n.identity,
                "datasets": list(n.datasets),
                "health": n.health,
                "detail": n.detail,
            }
            for n in nodes
        ],
    )
    return 0


# -- rendering -------------------------------------------------------------------------


def params_of(q: QueryInfo) -> dict[str, Any]:
    """The parameters a stored query ran with: from the result when this client ran it,
    else from the analyst's signed request the coordinator returns (`request_body`)."""
    if q.result is not None and q.result.params:
        return dict(q.result.params)
    body = getattr(q, "request_body", b"")
    if isinstance(body, bytes) and body:
        try:
            return dict(requests.parse(body).params)
        except ValueError:
            return {}
    return {}


def _add_trust(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust",
        type=Path,
        metavar="TRUST_FILE",
        help="check the result against these node keys (or TESSERA_TRUST); see `query verify`",
    )


def _verified(client: Client, q: QueryInfo) -> QueryInfo:
    """The stored query with its verification outcome attached, when the client has node
    keys to trust; a result that does not verify is shown as failed, not hidden."""
    if client.trust is None or q.result is None:
        return q
    v = client.verify_query(q.query_id)
    return dataclasses.replace(q, result=dataclasses.replace(q.result, verification=v))


def _template_of(client: Client, r: QueryResult) -> Template | None:
    try:
        return client.get_template(r.template_digest).template
    except ClientError:
        return None


def _write_report(
    con: Console,
    path: Path,
    r: QueryResult,
    template: Template | None,
    params: Mapping[str, Any],
    q: QueryInfo | None = None,
) -> None:
    from tessera.report.html import query_report

    page = query_report(
        r,
        template,
        params=params,
        analyst=q.analyst if q else "",
        submitted_at=q.submitted_at if q else "",
    )
    path.write_text(page, encoding="utf-8")
    con.print(f"report: {escape(str(path))}")


def _status(status: str) -> str:
    return "[green]OK[/green]" if status == "OK" else f"[red]{escape(status)}[/red]"


def _node_line(n: NodeReport) -> str:
    mark = "[green]✓[/green]" if n.status == "OK" else "[red]✗[/red]"
    detail = f": {escape(n.message)}" if n.message else ""
    return f"  {mark} {escape(n.organisation)} {_status(n.status)}{detail} ({n.latency_ms:.0f} ms)"


def _print_cells(con: Console, title: str, dims: list[str], cells: list[Cell]) -> None:
    levels = {notebook.coverage(c) for c in cells}
    level = notebook.coverage_text(levels.pop()) if len(levels) == 1 else "stated"
    rows = []
    for c in cells:
        lo, hi = notebook.interval(c)
        est = "suppressed" if c.suppressed else f"{c.estimate:g}"
        rows.append([*(escape(c.key[d]) for d in dims), est, f"{lo:g} – {hi:g}"])
    cols = (*dims, "estimate", f"{level} interval")
    print_table(con, title, cols, rows, right=("estimate", f"{level} interval"))


def _result_json(r: QueryResult) -> dict[str, Any]:
    out = r.to_json_dict()
    out["query_id"] = r.query_id
    out["provenance"] = notebook.provenance(r)
    return out


def _query_json(q: QueryInfo, *, cells: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "query_id": q.query_id,
        "analyst": q.analyst,
        "submitted_at": q.submitted_at,
        "state": q.state,
    }
    if q.result is not None:
        r = q.result
        if cells:
            out["result"] = _result_json(r)
        else:
            out.update(
                template=r.template,
                mode=r.mode,
                released=r.released,
                nodes_answered=r.nodes_answered,
                nodes_missing=list(r.nodes_missing),
            )
    return out


def _report(
    con: Console, args: argparse.Namespace, r: QueryResult, q: QueryInfo | None = None
) -> int:
    spent = ", ".join(f"{k}={v:g}" for k, v in r.privacy_spent.items())
    if r.released:
        _print_cells(con, f"{r.template} ({r.mode})", r.dimensions, r.cells)
        for org, cells in sorted((r.per_node or {}).items()):
            _print_cells(con, f"{org} alone", r.dimensions, cells)
        con.print(f"nodes contributing: {escape(', '.join(r.nodes_answered))}")
        for note in r.notes:
            con.print(f"[yellow]note[/yellow]: {escape(note)}")
    else:
        con.print(f"[red]withheld[/red]: {escape(r.withheld_reason)}")
    for org, why in r.nodes_missing.items():
        con.print(f"[yellow]missing[/yellow] {escape(org)}: {escape(why)}")
    status, _ = notebook.verification(r)
    con.print(f"privacy spent on each node's ledger: {spent}; query id {r.query_id}")
    con.print(f"verification: {status}")
    write_json(args, _query_json(q) if q is not None else _result_json(r))
    if args.csv is not None:
        r.to_csv(args.csv)
    return 0 if r.released else EXIT_WITHHELD
