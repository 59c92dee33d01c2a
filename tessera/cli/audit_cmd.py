"""`tessera audit`: verify and show a node's or the coordinator's audit log."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tessera import audit, canonical
from tessera.cli.output import add_json_arg, json_to_stdout, write_json
from tessera.keys import PREFIX, KeyError_, PublicKey


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("audit", help="verify or show an audit log")
    sub = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    v = sub.add_parser(
        "verify",
        help="check the hash chain, signatures and head of an audit log",
        description="Exit 0 if the log verifies, 1 if not.",
    )
    v.add_argument("db", metavar="DB", type=Path)
    v.add_argument(
        "--key",
        required=True,
        metavar="PUBKEY_ID_OR_FILE",
        help="the log owner's public key id (ed25519:<hex>) or a .pub file holding it",
    )
    v.add_argument("--head", type=Path, metavar="PATH", help="head file (default DB.head)")
    v.add_argument(
        "--no-head",
        action="store_true",
        help="skip the head check (entries removed from the end go undetected)",
    )
    v.add_argument(
        "--against",
        type=Path,
        metavar="COORDINATOR_DB",
        help="cross-check a node's log against the coordinator's receipts in this log "
        "(detects a log or ledger restored from an older copy); needs --node and "
        "--coordinator-key",
    )
    v.add_argument("--node", metavar="ORGANISATION", help="the node's organisation name")
    v.add_argument(
        "--coordinator-key",
        metavar="PUBKEY_ID_OR_FILE",
        help="the coordinator's public key id or .pub file",
    )
    add_json_arg(v, "the outcome")
    v.set_defaults(handler=run_verify)

    s = sub.add_parser("show", help="print the latest entries as a table")
    s.add_argument("db", metavar="DB", type=Path)
    s.add_argument("--last", type=int, default=20, metavar="N", help="how many (default 20)")
    add_json_arg(s, "the entries (seq, hash and decoded body)")
    s.set_defaults(handler=run_show)


def load_public_key(value: str) -> PublicKey:
    """A key id, or a file holding one (as `SigningKey.save` writes `<key>.pub`)."""
    if value.startswith(PREFIX):
        return PublicKey.from_id(value)
    path = Path(value)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyError_(f"cannot read key file {path}: {e.strerror}") from None
    if len(data) > 1024:
        raise KeyError_(f"{path} does not hold a public key id")
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyError_(f"{path} does not hold a public key id") from None
    if not text.startswith(PREFIX):
        # Never echo the content: the user may have pointed at a private key.
        raise KeyError_(f"{path} does not hold a public key id (want 'ed25519:<hex>')")
    return PublicKey.from_id(text)


def run_verify(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    # With --json -, standard output carries only the JSON; the words go to stderr.
    out = sys.stderr if json_to_stdout(args) else sys.stdout

    def say(text: str) -> None:
        print(text, file=out)

    try:
        key = load_public_key(args.key)
    except KeyError_ as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    against: list[audit.Receipt] = []
    if args.against is not None:
        if not args.node or not args.coordinator_key:
            print("error: --against needs --node and --coordinator-key", file=sys.stderr)
            return 2
        try:
            coordinator_key = load_public_key(args.coordinator_key)
        except KeyError_ as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        theirs, against = audit.receipts(args.against, coordinator_key, args.node)
        if not theirs.ok:
            say("FAILED: the coordinator's log does not verify:")
            for problem in theirs.problems:
                say(f"  - coordinator: {problem}")
            write_json(args, {"ok": False, "coordinator_problems": list(theirs.problems)})
            return 1
        say(f"coordinator log: {theirs.entries} entries, {len(against)} receipts for {args.node}")
    result = audit.verify(args.db, key, args.head, check_head=not args.no_head, against=against)
    write_json(
        args,
        {
            "ok": result.ok,
            "entries": result.entries,
            "key": key.key_id,
            "receipts_checked": len(against),
            "problems": list(result.problems),
        },
    )
    if result.ok:
        say(f"OK: {result.entries} entries verify with {key.key_id}")
        return 0
    say(f"FAILED: {result.entries} entries checked, the log does not verify:")
    for problem in result.problems:
        say(f"  - {problem}")
    return 1


def run_show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if not args.db.is_file():
        print(f"error: {args.db}: no such file", file=sys.stderr)
        return 1
    try:
        entries = audit.read_entries(args.db, last=max(0, args.last))
    except sqlite3.Error as err:
        print(f"error: cannot read {args.db}: {err}", file=sys.stderr)
        return 1
    decoded = []
    for e in entries:
        try:
            body: Any = e.fields()
        except canonical.CanonicalError:
            body = None
        decoded.append({"seq": e.seq, "hash": e.hash, "prev_hash": e.prev_hash, "body": body})
    write_json(args, {"db": str(args.db), "verified": False, "entries": decoded})
    if json_to_stdout(args):
        return 0
    table = Table(title=f"{args.db} (last {len(entries)}; not verified)")
    for col in ("seq", "time", "actor", "outcome", "mode", "template", "cost", "params", "message"):
        table.add_column(col, overflow="fold")
    for e in entries:
        try:
            f = e.fields()
        except canonical.CanonicalError:
            table.add_row(str(e.seq), *([""] * 7), "[unreadable body]")
            continue
        digest = f.get("template_digest")
        table.add_row(
            str(e.seq),
            _cell(f.get("time")),
            _cell(f.get("actor")),
            _cell(f.get("outcome")),
            _cell(f.get("mode")),
            _cell(digest[:12] + "…" if isinstance(digest, str) and len(digest) > 12 else digest),
            _cell(f.get("cost")),
            _cell(f.get("params")),
            _cell(f.get("message")),
        )
    Console().print(table)
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else canonical.encode(value).decode("utf-8")
    # Fields come from requests: never let them inject rich markup.
    return escape(text)
