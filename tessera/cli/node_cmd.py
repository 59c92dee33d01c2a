"""`tessera node serve|ingest|budget`: a node operator's commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def register(sub: Any) -> None:
    p = sub.add_parser("node", help="run and operate a node")
    node_sub = p.add_subparsers(dest="node_command", required=True, metavar="COMMAND")

    serve = node_sub.add_parser("serve", help="serve NodeService over mutual TLS")
    serve.add_argument("--config", type=Path, required=True)
    serve.set_defaults(handler=_serve)

    budget = node_sub.add_parser("budget", help="show spent and remaining privacy budget")
    budget.add_argument("--config", type=Path, required=True)
    budget.set_defaults(handler=_budget)

    from tessera.cli.ingest_cmd import register_ingest

    register_ingest(node_sub)


def _serve(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from tessera.node import config, main

    return main.serve_forever(config.load(args.config))


def _budget(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from tessera.clock import SystemClock
    from tessera.node import config, main

    cfg = config.load(args.config)
    service = main.build_service(cfg, SystemClock())
    try:
        rows = service.status()
    finally:
        service.ledger.close()
        service.catalog.close()
    table = Table(title=f"Privacy budget: {cfg.organisation}")
    for col in ("dataset", "version", "measure", "total", "spent", "left"):
        table.add_column(col, justify="right" if col in ("total", "spent", "left") else "left")
    for d in rows:
        for kind, total in d.budget_total.items():
            spent = d.budget_spent[kind]
            table.add_row(
                d.name,
                str(d.version),
                kind,
                f"{total:g}",
                f"{spent:.6g}",
                f"{max(total - spent, 0):.6g}",
            )
    Console().print(table)
    return 0
