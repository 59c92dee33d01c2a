"""`tessera certs`: write a test / local federation CA and mTLS certificates."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tessera import tls

_WARNING = (
    "warning: these certificates and unencrypted keys are for testing and local "
    "federations; a production federation should issue certificates from its own PKI "
    "and keep the CA key offline."
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "certs",
        help="make a federation CA and mTLS certificates (testing / local use)",
        description=(
            "Write ca.crt/ca.key and <name>.crt/<name>.key files into OUT_DIR. Each node "
            "gets a server+client certificate naming that node only (SAN "
            "<name>.node.tessera, lower-cased; the coordinator and node clients pin it), "
            "plus any --node-server-name; the coordinator gets one with SANs localhost "
            "and 127.0.0.1 (or --server-name); users get a client certificate. The "
            "certificate CN is the name, which is the identity servers see. If OUT_DIR "
            "already holds ca.crt and ca.key, that CA signs the new certificates."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path)
    p.add_argument("--node", action="append", default=[], metavar="NAME", help="repeatable")
    p.add_argument("--coordinator", metavar="NAME")
    p.add_argument("--user", action="append", default=[], metavar="NAME", help="repeatable")
    p.add_argument(
        "--org",
        action="append",
        default=[],
        metavar="NAME=ORG",
        help="Organization (O) attribute for NAME's certificate; repeatable",
    )
    p.add_argument(
        "--server-name",
        action="append",
        default=None,
        metavar="HOST",
        help="SAN for the coordinator certificate (default: localhost and 127.0.0.1)",
    )
    p.add_argument(
        "--node-server-name",
        action="append",
        default=[],
        metavar="HOST",
        help="extra SAN for every node certificate (default: none, so no two nodes share a name)",
    )
    p.add_argument("--ca-only", action="store_true", help="only create the CA")
    p.add_argument("--days", type=int, default=tls.CERT_DAYS, help="certificate lifetime")
    p.add_argument("--force", action="store_true", help="overwrite existing certificates")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    out: Path = args.out_dir
    names = [*args.node, *([args.coordinator] if args.coordinator else []), *args.user]
    if args.ca_only and names:
        print("error: --ca-only takes no --node, --coordinator or --user", file=sys.stderr)
        return 2
    if not args.ca_only and not names:
        print("error: give at least one --node, --coordinator or --user", file=sys.stderr)
        return 2
    if args.days <= 0:
        print("error: --days must be positive", file=sys.stderr)
        return 2
    orgs: dict[str, str] = {}
    for item in args.org:
        name, sep, org = item.partition("=")
        if not sep or not name or not org:
            print(f"error: --org wants NAME=ORG, got {item!r}", file=sys.stderr)
            return 2
        orgs[name] = org

    ca_crt, ca_key = out / f"{tls.CA_STEM}.crt", out / f"{tls.CA_STEM}.key"
    existing_ca = ca_crt.exists() and ca_key.exists()
    if ca_crt.exists() != ca_key.exists():
        print(f"error: {out} holds only one of ca.crt and ca.key", file=sys.stderr)
        return 1
    clashes = [
        str(out / f"{n}{ext}")
        for n in names
        for ext in (".crt", ".key")
        if (out / f"{n}{ext}").exists()
    ]
    if args.ca_only and existing_ca:
        clashes += [str(ca_crt), str(ca_key)]
    if clashes and not args.force:
        print("error: would overwrite " + ", ".join(clashes) + " (use --force)", file=sys.stderr)
        return 1

    print(_WARNING, file=sys.stderr)
    try:
        if args.ca_only:
            ca = tls.make_ca("Tessera federation CA", out)
            _written("CA", ca.cert_path, ca.key_path)
            return 0
        if existing_ca:
            ca = tls.CertificateAuthority.load(ca_crt, ca_key)
            print(f"using existing CA {ca_crt}")
        fed = tls.make_federation(
            out,
            nodes=args.node,
            coordinator=args.coordinator,
            users=args.user,
            ca=ca if existing_ca else None,
            organizations=orgs,
            server_names=args.server_name or tls.LOCAL_SERVER_NAMES,
            node_server_names=args.node_server_name,
            days=args.days,
        )
    except tls.TlsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not existing_ca:
        _written("CA", fed.ca.cert_path, fed.ca.key_path)
    for name, files in fed.nodes.items():
        _written(f"node {name}", files.cert, files.key)
    if fed.coordinator is not None:
        _written(f"coordinator {args.coordinator}", fed.coordinator.cert, fed.coordinator.key)
    for name, files in fed.users.items():
        _written(f"user {name}", files.cert, files.key)
    return 0


def _written(what: str, cert: Path, key: Path) -> None:
    # Paths only: the key material itself is never printed.
    print(f"{what}: {cert} (key {key}, mode 0600)")
