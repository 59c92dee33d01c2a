"""`tessera template submit|list|show|approve`: templates held by the coordinator.

`approve` takes the full digest: an approver signs exactly the template they read
with `show`, never "whatever is newest under this id".
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tessera.cli.remote import add_connection_args, connect, handles_errors
from tessera.client import TemplateInfo
from tessera.templates.model import DateParam, EnumParam, Template

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def _digest(text: str) -> str:
    if not _DIGEST.match(text):
        raise argparse.ArgumentTypeError("give the template's full 64-hex digest (see `show`)")
    return text


def register_remote(t_sub: Any) -> None:
    submit = t_sub.add_parser("submit", help="send a template file to the coordinator for approval")
    submit.add_argument("template", type=Path)
    add_connection_args(submit)
    submit.set_defaults(handler=_submit)

    ls = t_sub.add_parser("list", help="templates at the coordinator")
    ls.add_argument("--state", choices=("pending", "published"), default="")
    add_connection_args(ls)
    ls.set_defaults(handler=_list)

    show = t_sub.add_parser("show", help="read a template at the coordinator before approving it")
    show.add_argument("digest_or_id", metavar="DIGEST_OR_ID")
    show.add_argument(
        "--canonical",
        action="store_true",
        help="print the exact canonical JSON that approvals sign",
    )
    add_connection_args(show)
    show.set_defaults(handler=_show)

    approve = t_sub.add_parser("approve", help="sign a template at the coordinator with your key")
    approve.add_argument("digest", type=_digest, metavar="DIGEST")
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
    Console().print(f"submitted {_summary(info)}")
    return 0


@handles_errors
def _list(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=False) as client:
        infos = client.list_templates(args.state)
    table = Table(title="Templates at the coordinator")
    for col in ("id", "version", "title", "state", "approvals", "digest", "submitted by"):
        table.add_column(col, no_wrap=col in ("id", "digest"))
    for t in infos:
        table.add_row(
            escape(t.id),
            str(t.version),
            escape(t.title),
            t.state,
            f"{t.approvals}/{t.approvals_required}",
            t.digest[:16] + "…",
            escape(t.submitted_by),
        )
    Console().print(table)
    return 0


def _parameters(t: Template) -> str:
    out = []
    for p in t.parameters:
        if isinstance(p, DateParam):
            out.append(f"{p.name}: date {p.min} to {p.max}")
        elif isinstance(p, EnumParam):
            out.append(f"{p.name}: one of {', '.join(p.values)}")
        else:
            out.append(f"{p.name}: integer {p.min} to {p.max}")
    return "; ".join(out) or "none"


@handles_errors
def _show(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=False) as client:
        info = client.get_template(args.digest_or_id)
    console = Console()
    if args.canonical:
        console.out(info.canonical.decode("utf-8"), highlight=False)
        return 0
    t = info.template
    cost = (
        f"epsilon {t.privacy.epsilon}" if t.privacy.epsilon is not None else f"rho {t.privacy.rho}"
    )
    rows = [
        ("title", t.title),
        ("purpose", t.purpose),
        ("legal basis", t.legal_basis),
        (
            "dataset",
            f"{t.dataset} (schema {t.schema_version}), source {t.source}, "
            f"privacy unit {t.privacy_unit}",
        ),
        ("parameters", _parameters(t)),
        ("cells", " x ".join(f"{d.name} ({len(d.labels)})" for d in t.group_by) or "one"),
        ("statistic", t.statistic.kind.value),
        ("privacy cost per node", cost),
        ("output", f"suppress below {t.output.min_count}, round to {t.output.round_to}"),
        ("analysts", ", ".join(f"{a.name} ({a.key[:20]}…)" for a in t.access.analysts)),
        ("expires", t.access.expires.isoformat()),
        ("quorum", str(t.access.quorum)),
        ("per-node breakdown", "allowed" if t.access.per_node_breakdown else "not allowed"),
        ("submitted", f"by {info.submitted_by} at {info.submitted_at}"),
    ]
    table = Table(title=_summary(info), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, escape(v))
    console.print(table)
    if t.description.strip():
        console.print(escape(t.description.strip()))
    return 0


@handles_errors
def _approve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    with connect(args, environ, signing=True) as client:
        info = client.approve(args.digest)
    Console().print(f"approved {_summary(info)}")
    return 0
