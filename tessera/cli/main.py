"""The `tessera` command. Each subcommand group lives in its own module with a
`register(subparsers)` function; handlers take (args, environ) and return an exit code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Mapping, Sequence

# Modules that register subcommands, in the order they appear in --help.
_GROUPS = (
    "tessera.cli.keys_cmd",
    "tessera.cli.certs_cmd",
    "tessera.cli.template_cmd",
    "tessera.cli.node_cmd",
    "tessera.cli.audit_cmd",
    "tessera.cli.roster_cmd",
    "tessera.cli.synth_cmd",
    "tessera.cli.coordinator_cmd",
    "tessera.cli.query_cmd",
    "tessera.cli.demo_cmd",
    "tessera.cli.completion_cmd",
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tessera")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera", description="Tessera: federated analytics that never holds the data."
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error instead of its short message",
    )
    parser.add_argument("--version", action="version", version=f"tessera {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _GROUPS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # group not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    # A config, key, certificate, file or port mistake: a short message and exit 2.
    from tessera import startup

    code: int = startup.run(lambda: int(args.handler(args, env)), debug=args.debug)
    return code


def entry() -> None:
    # gRPC's C core would log its own copy of errors we report in one line (a port in
    # use, say); GRPC_VERBOSITY=ERROR (or DEBUG) brings its log back.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    sys.exit(main())
