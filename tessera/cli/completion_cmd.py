"""`tessera completion bash|zsh|tcsh`: print a shell completion script.

tessera completion bash > ~/.local/share/bash-completion/completions/tessera
tessera completion zsh > "${fpath[1]}/_tessera"
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

SHELLS = ("bash", "zsh", "tcsh")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or tcsh)",
        description="Print a completion script for SHELL on standard output, for example: "
        "tessera completion bash > ~/.local/share/bash-completion/completions/tessera",
    )
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or tcsh")
    p.set_defaults(handler=_completion)


def _completion(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import shtab

    from tessera.cli.main import build_parser

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0
