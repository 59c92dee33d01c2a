"""`tessera coordinator serve`: run the coordinator."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("coordinator", help="run the coordinator")
    c_sub = p.add_subparsers(dest="coordinator_command", required=True, metavar="COMMAND")
    serve = c_sub.add_parser(
        "serve",
        help="serve CoordinatorService over mutual TLS",
        description='Prints one JSON line {"ready": true, "port": N} once it is serving; '
        "stops cleanly on SIGTERM or SIGINT.",
    )
    serve.add_argument("--config", type=Path, required=True)
    from tessera import observability

    observability.add_arguments(serve)
    serve.set_defaults(handler=_serve)

    from tessera.cli.rotate_cmd import register_rotate

    register_rotate(c_sub, "coordinator")


def _serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from tessera import observability
    from tessera.coordinator import config, main

    return main.serve_forever(
        config.load(args.config), observability.options_from(args), str(args.config)
    )
