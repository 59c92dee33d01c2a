"""`tessera demo`: run a whole local federation end to end."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a whole local federation on loopback, end to end")
    p.add_argument(
        "--json",
        type=Path,
        dest="json_path",
        help="write the results as JSON here; '-' writes only JSON, to standard output",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=0.05,
        help="size of the synthetic region (1.0 is about 500,000 children)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--workdir",
        type=Path,
        help="keep certificates, data and logs here instead of a temporary folder",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="after the demo, keep the federation running until Ctrl-C (use with --workdir)",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from tessera.demo.run import DemoOptions, run

    if args.serve and args.workdir is None:
        print("--serve needs --workdir, so that the certificates and keys outlive the command")
        return 2
    to_stdout = args.json_path == Path("-")
    console = Console(stderr=to_stdout)
    summary = run(
        DemoOptions(
            scale=args.scale,
            seed=args.seed,
            json_path=None if to_stdout else args.json_path,
            workdir=args.workdir,
            serve=args.serve,
        ),
        console,
    )
    if to_stdout:
        print(json.dumps(summary, indent=2))
    refused = all(d["status"] != "OK" and d["budget_spent"] == 0 for d in summary["drills"])
    return 0 if refused else 1
