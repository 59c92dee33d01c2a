"""`tessera template check|show|sign`, and with a coordinator `submit|list|fetch|approve`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from tessera import approvals, templates
from tessera.keys import SigningKey


def register(sub: Any) -> None:
    p = sub.add_parser("template", help="check, sign and share query templates")
    t_sub = p.add_subparsers(dest="template_command", required=True, metavar="COMMAND")

    check = t_sub.add_parser("check", help="validate a template file and print its digest")
    check.add_argument("template", type=Path)
    check.set_defaults(handler=_check)

    sign = t_sub.add_parser("sign", help="add your approval signature beside a template file")
    sign.add_argument("template", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="your approver private key")
    sign.set_defaults(handler=_sign)

    from tessera.cli.template_remote import register_remote

    register_remote(t_sub)


def load_file(path: Path) -> templates.Template:
    return templates.load_toml(path.read_text(encoding="utf-8"))


def _check(args: argparse.Namespace, environ: dict[str, str]) -> int:
    console = Console()
    try:
        t = load_file(args.template)
    except templates.TemplateError as e:
        console.print(f"[red]refused[/red]: {e}")
        return 2
    console.print(f"[green]ok[/green] {t.id} v{t.version}: {t.title}")
    console.print(f"digest: {templates.digest(t)}")
    console.print(f"cells: {t.n_cells}  cost: {_cost(t)}")
    sigs = approvals.load(approvals.sigs_path(args.template))
    console.print(f"approvals beside the file: {len(sigs)}")
    return 0


def _cost(t: templates.Template) -> str:
    p = t.privacy
    return f"epsilon={p.epsilon}" if p.epsilon is not None else f"rho={p.rho}"


def _sign(args: argparse.Namespace, environ: dict[str, str]) -> int:
    try:
        t = load_file(args.template)
    except templates.TemplateError as e:
        print(f"refused: {e}")
        return 2
    key = SigningKey.load(args.key)
    digest = templates.digest(t)
    path = approvals.sigs_path(args.template)
    existing = approvals.load(path)
    approvals.save(path, approvals.add(existing, approvals.sign(digest, key)))
    print(f"signed {t.id} v{t.version} (digest {digest}) as {key.public.key_id}")
    print(f"approvals now: {len(approvals.load(path))} in {path}")
    return 0
