"""`tessera template check|review|sign`, and with a coordinator `submit|list|show|approve`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.markup import escape

from tessera import approvals, templates
from tessera.cli.output import add_json_arg, console, write_json
from tessera.keys import SigningKey


def register(sub: Any) -> None:
    p = sub.add_parser("template", help="check, sign and share query templates")
    t_sub = p.add_subparsers(dest="template_command", required=True, metavar="COMMAND")

    check = t_sub.add_parser("check", help="validate a template file and print its digest")
    check.add_argument("template", type=Path)
    add_json_arg(check, "the outcome")
    check.set_defaults(handler=_check)

    review = t_sub.add_parser(
        "review",
        help="an approver's review of a template file: every field in plain words",
        description="Print everything FILE's template does, in plain words, with its digest; "
        "with --html, also write a self-contained page that shows it beside the canonical text.",
    )
    review.add_argument("template", type=Path, metavar="FILE")
    review.add_argument(
        "--html",
        type=Path,
        nargs="?",
        const=Path(),
        metavar="PATH",
        help="write the review page here (default: FILE with the suffix .review.html)",
    )
    add_json_arg(review, "the digest and canonical template")
    review.set_defaults(handler=_review)

    sign = t_sub.add_parser("sign", help="add your approval signature beside a template file")
    sign.add_argument("template", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="your approver private key")
    sign.set_defaults(handler=_sign)

    from tessera.cli.template_remote import register_remote

    register_remote(t_sub)


def load_file(path: Path) -> templates.Template:
    return templates.load_toml(path.read_text(encoding="utf-8"))


def _check(args: argparse.Namespace, environ: dict[str, str]) -> int:
    con = console(environ, args)
    try:
        t = load_file(args.template)
    except (OSError, templates.TemplateError) as e:
        con.print(f"[red]refused[/red]: {escape(str(e))}")
        write_json(args, {"ok": False, "error": str(e)})
        return 2
    digest = templates.digest(t)
    con.print(f"[green]ok[/green] {escape(t.id)} v{t.version}: {escape(t.title)}")
    con.print(f"digest: {digest}")
    con.print(f"cells: {t.n_cells}  cost: {_cost(t)}")
    sigs = approvals.load(approvals.sigs_path(args.template))
    con.print(f"approvals beside the file: {len(sigs)}")
    write_json(
        args,
        {
            "ok": True,
            "id": t.id,
            "version": t.version,
            "title": t.title,
            "digest": digest,
            "cells": t.n_cells,
            "cost": _cost(t),
            "approvals": len(sigs),
        },
    )
    return 0


def _review(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from tessera.cli.template_remote import show_template
    from tessera.report.html import template_review

    con = console(environ, args)
    try:
        source = args.template.read_text(encoding="utf-8")
        t = templates.load_toml(source)
    except (OSError, templates.TemplateError) as e:
        con.print(f"[red]refused[/red]: {escape(str(e))}")
        return 2
    digest, canonical = templates.digest(t), templates.encode(t)
    sigs = approvals.load(approvals.sigs_path(args.template))
    heading = f"{escape(t.id)} v{t.version} (file {escape(str(args.template))})"
    show_template(con, heading, t, digest, [("approvals beside the file", str(len(sigs)))])
    if args.html is not None:
        out = args.html if args.html != Path() else args.template.with_suffix(".review.html")
        page = template_review(t, digest, canonical, source_text=source, approvals=len(sigs))
        out.write_text(page, encoding="utf-8")
        con.print(f"review page: {escape(str(out))}")
    write_json(
        args,
        {
            "id": t.id,
            "version": t.version,
            "digest": digest,
            "approvals": len(sigs),
            "template": json.loads(canonical),
        },
    )
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
