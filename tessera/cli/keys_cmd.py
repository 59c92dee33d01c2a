"""`tessera keys new`: an Ed25519 key pair for an approver, analyst or node."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tessera.keys import SigningKey


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="make Ed25519 signing keys")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    new = keys_sub.add_parser("new", help="write a new private key and its public key id")
    new.add_argument("path", type=Path, help="private key file to write (mode 0600)")
    new.add_argument("--force", action="store_true", help="overwrite an existing key")
    new.set_defaults(handler=_new)


def _new(args: argparse.Namespace, environ: dict[str, str]) -> int:
    if args.path.exists() and not args.force:
        print(f"{args.path} exists; not overwriting (use --force)")
        return 2
    key = SigningKey.generate()
    key.save(args.path)
    print(f"private key: {args.path} (keep it secret)")
    print(f"public key id: {key.public.key_id}")
    return 0
