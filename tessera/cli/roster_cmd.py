"""`tessera roster make|approve|show`: the federation roster of node keys, signed by
the approvers, which analysts use to trust node answers (docs/security.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tessera import roster
from tessera.cli.output import add_json_arg, json_to_stdout, write_json
from tessera.keys import KeyError_, SigningKey


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("roster", help="the federation's node keys, signed by approvers")
    sub = p.add_subparsers(dest="roster_command", required=True, metavar="ACTION")
    mk = sub.add_parser("make", help="write an unsigned roster")
    mk.add_argument("out", type=Path, metavar="ROSTER")
    mk.add_argument("--federation", required=True, metavar="NAME")
    mk.add_argument(
        "--node",
        action="append",
        required=True,
        metavar="ORG=KEY_ID[=IDENTITY]",
        help="a node's organisation, signing key id and certificate identity; repeatable",
    )
    mk.set_defaults(handler=_make)
    ap = sub.add_parser("approve", help="add your signature to a roster")
    ap.add_argument("roster", type=Path, metavar="ROSTER")
    ap.add_argument("--key", type=Path, required=True, metavar="PRIVATE_KEY")
    ap.set_defaults(handler=_approve)
    show = sub.add_parser("show", help="print a roster's nodes and its digest")
    show.add_argument("roster", type=Path, metavar="ROSTER")
    add_json_arg(show, "the roster's nodes and digest")
    show.set_defaults(handler=_show)


def _make(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    entries = []
    for item in args.node:
        parts = item.split("=")
        if len(parts) not in (2, 3) or not all(parts):
            print(f"error: --node wants ORG=KEY_ID[=IDENTITY], got {item!r}", file=sys.stderr)
            return 2
        org, key_id = parts[0], parts[1]
        entries.append(roster.Entry(org, key_id, parts[2] if len(parts) == 3 else org))
    try:
        body = roster.make(args.federation, entries, datetime.now(UTC))
    except (roster.RosterError, KeyError_) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    roster.save(args.out, body, [])
    print(f"roster {args.out}: {len(entries)} node(s), digest {roster.digest(body)}")
    return 0


def _approve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        key = SigningKey.load(args.key)
        roster.add(args.roster, key)
    except (roster.RosterError, KeyError_) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"signed {args.roster} as {key.public.key_id}")
    return 0


def _show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        body, signed = roster.load(args.roster)
        d = roster.digest(body)
    except roster.RosterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = sys.stderr if json_to_stdout(args) else sys.stdout
    print(f"digest {d}; {len(signed)} signature(s) (not verified here)", file=out)
    for n in body.get("nodes", []):
        print(
            f"  {n.get('organisation')}: {n.get('node_key')} (identity {n.get('identity')})",
            file=out,
        )
    write_json(
        args,
        {"digest": d, "signatures": len(signed), "verified": False, "roster": body},
    )
    return 0
