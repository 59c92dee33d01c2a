"""Output conventions shared by the analyst's and approver's commands.

- `--json PATH` on every listing or showing command; `-` means standard output, and
  then the human-readable output goes to standard error so that stdout is pure JSON.
- Tables fit the terminal: at 100 columns or more a normal table (folding long
  values); below that, a table that would have to wrap is printed as one block of
  `column: value` lines per row instead, so that nothing is cut.
- The width comes from COLUMNS in the command's environment when set, else the terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

WIDE = 100
STDOUT = "-"


def add_json_arg(p: argparse.ArgumentParser, what: str = "the output") -> None:
    p.add_argument(
        "--json",
        metavar="PATH",
        dest="json_out",
        help=f"also write {what} as JSON to PATH; '-' writes only JSON, to standard output",
    )


def json_to_stdout(args: argparse.Namespace) -> bool:
    return getattr(args, "json_out", None) == STDOUT


def console(environ: Mapping[str, str], args: argparse.Namespace | None = None) -> Console:
    """The console for human output: stderr when JSON goes to stdout."""
    width: int | None = None
    columns = environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    stderr = args is not None and json_to_stdout(args)
    return Console(width=width, stderr=stderr, file=sys.stderr if stderr else sys.stdout)


def write_json(args: argparse.Namespace, data: Any) -> None:
    """Write `data` where --json asked: a file, or standard output for '-'."""
    dest = getattr(args, "json_out", None)
    if dest is None:
        return
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    if dest == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        Path(dest).write_text(text, encoding="utf-8")


def print_table(
    con: Console,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Sequence[str] = (),
    no_wrap: Sequence[str] = (),
) -> None:
    """A table whose cells are rich markup. Below 100 columns, a table that would have
    to wrap its values is printed as vertical blocks instead; one that fits stays."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", no_wrap=col in no_wrap)
    for row in rows:
        table.add_row(*row)
    natural = Measurement.get(con, con.options.update_width(10_000), table).maximum
    if con.width < WIDE and natural > con.width:
        print_vertical(con, title, columns, rows)
        return
    con.print(table)


def print_vertical(
    con: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]
) -> None:
    con.print(f"[bold]{escape(title)}[/bold]")
    if not rows:
        con.print("(none)")
        return
    label_width = max(len(c) for c in columns)
    for i, row in enumerate(rows):
        if i:
            con.print()
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", width=label_width + 1, no_wrap=True)
        grid.add_column(overflow="fold")
        for col, value in zip(columns, row, strict=True):
            grid.add_row(f"{escape(col)}:", value)
        con.print(grid)


def print_fields(con: Console, title: str, fields: Sequence[tuple[str, str]]) -> None:
    """A record of (label, plain text) pairs: a two-column grid on a wide terminal, and
    below 100 columns (or when a label would not fit its column) one `label: value`
    paragraph each, folded, so that no value is cut or interleaved with another."""
    if title:
        con.print(Text(title, style="bold"))
    width = max((len(k) for k, _ in fields), default=0)
    if con.width < WIDE or width > con.width // 3:
        for k, v in fields:
            line = Text.assemble((f"{k.strip()}: ", "bold"), v)
            if k.startswith("  "):
                line = Text("  ") + line
            con.print(line, overflow="fold")
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", width=width, overflow="fold")
    grid.add_column(overflow="fold")
    for k, v in fields:
        grid.add_row(Text(k), Text(v))
    con.print(grid)
