"""`tessera template submit|list|show|approve`: templates held by the coordinator.

`show` prints every field an approver checks (and `--canonical` the exact bytes that
approvals sign); given a `.toml` file it shows that file without a coordinator.
`approve` takes the full digest: an approver signs exactly the template they read
with `show`, never "whatever is newest under this id".
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from tessera import templates
from tessera.cli.output import add_json_arg, console, print_fields, print_table, write_json
from tessera.cli.remote import UsageError, add_connection_args, connect, handles_errors
from tessera.client import TemplateInfo
from tessera.report.describe import describe
from tessera.templates.model import Template

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def _digest(text: str) -> str:
    if not _DIGEST.match(text):
        raise argparse.ArgumentTypeError("give the template's full 64-hex digest (see `show`)")
    return text


def register_remote(t_sub: Any) -> None:
    submit = t_sub.add_parser("submit", help="send a template file to the coordinator for approval")
    submit.add_argument("template", type=Path)
    add_json_arg(submit, "the submitted template's record")
    add_connection_args(submit)
    submit.set_defaults(handler=_submit)

    ls = t_sub.add_parser("list", help="templates at the coordinator")
    ls.add_argument("--state", choices=("pending", "published"), default="")
    add_json_arg(ls, "the list")
    add_connection_args(ls)
    ls.set_defaults(handler=_list)

    show = t_sub.add_parser(
        "show",
        help="read every field of a template (at the coordinator, or a .toml file)",
        description="Print every field an approver must check, in plain words: parameters, "
        "filters, each band's bounds and each category's codes, the per-unit cap, the cost, "
        "who may ask. DIGEST_OR_ID is a digest or id at the coordinator, or a .toml file.",
    )
    show.add_argument("digest_or_id", metavar="DIGEST_OR_ID|FILE")
    show.add_argument(
        "--canonical",
        action="store_true",
        help="print the exact canonical JSON that approvals sign",
    )
    add_json_arg(show, "the record and the canonical template")
    add_connection_args(show)
    show.set_defaults(handler=_show)

    approve = t_sub.add_parser("approve", help="sign a template at the coordinator with your key")
    approve.add_argument("digest", type=_digest, metavar="DIGEST")
    add_json_arg(approve, "the template's record after your approval")
    add_connection_args(approve)
    approve.set_defaults(handler=_approve)


def _summary(info: TemplateInfo) -> str:
    return (
        f"{escape(info.id)} v{info.version}: {info.state}, "
        f"{info.approvals} of {info.approvals_required} approvals\ndigest: {info.digest}"
    )


@handles_errors
def _submit(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=False) as client:
        info = client.submit_template(args.template)
    console(environ, args).print(f"submitted {_summary(info)}")
    write_json(args, _info_json(info))
    return 0


@handles_errors
def _list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=False) as client:
        infos = client.list_templates(args.state)
    rows = [
        [
            escape(t.id),
            str(t.version),
            escape(t.title),
            t.state,
            f"{t.approvals}/{t.approvals_required}",
            t.digest[:16] + "…",
            escape(t.submitted_by),
        ]
        for t in infos
    ]
    cols = ("id", "version", "title", "state", "approvals", "digest", "submitted by")
    print_table(console(environ, args), "Templates at the coordinator", cols, rows, no_wrap=("id",))
    write_json(args, [_info_json(t) for t in infos])
    return 0


def load_template_file(path: Path) -> Template:
    try:
        return templates.load_toml(path.read_text(encoding="utf-8"))
    except templates.TemplateError as e:
        raise UsageError(f"{path}: {e}") from None


def _info_json(info: TemplateInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "version": info.version,
        "title": info.title,
        "state": info.state,
        "digest": info.digest,
        "approvals": info.approvals,
        "approvals_required": info.approvals_required,
        "submitted_by": info.submitted_by,
        "submitted_at": info.submitted_at,
    }


def show_template(
    con: Console, heading: str, t: Template, digest: str, extra: list[tuple[str, str]]
) -> None:
    """Every field an approver checks, section by section, in plain words."""
    con.print(heading)
    for section in describe(t, digest):
        con.print()
        print_fields(con, section.heading, section.fields)
    if extra:
        con.print()
        print_fields(con, "At the coordinator", extra)


@handles_errors
def _show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    local = Path(args.digest_or_id)
    con = console(environ, args)
    if local.suffix == ".toml" and local.is_file():
        t = load_template_file(local)
        canonical, digest = templates.encode(t), templates.digest(t)
        heading, extra, meta = f"{escape(t.id)} v{t.version} (file {escape(str(local))})", [], {}
    else:
        with connect(args, environ, signing=False) as client:
            info = client.get_template(args.digest_or_id)
        t, canonical, digest = info.template, info.canonical, info.digest
        heading = _summary(info)
        extra = [
            ("state", info.state),
            ("approvals", f"{info.approvals} of {info.approvals_required}"),
            ("submitted", f"by {info.submitted_by} at {info.submitted_at}"),
        ]
        meta = _info_json(info)
    if args.canonical:
        con.out(canonical.decode("utf-8"), highlight=False)
    else:
        show_template(con, heading, t, digest, extra)
    write_json(args, {**meta, "digest": digest, "template": json.loads(canonical)})
    return 0


@handles_errors
def _approve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=True) as client:
        info = client.approve(args.digest)
    console(environ, args).print(f"approved {_summary(info)}")
    write_json(args, _info_json(info))
    return 0
