"""`tessera node ingest`: load source files as the next version of a dataset.

The node group calls ``register_ingest`` with its subparsers. All the work is
in ``node.ingest.ingest_dataset``; this only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from tessera.clock import SystemClock
from tessera.node.ingest import IngestError, ingest_dataset
from tessera.schemas import DATASETS

EXIT_OK = 0
EXIT_INGEST_ERROR = 2


def _table_file(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError("expected NAME=PATH, e.g. episodes=episodes.csv")
    return name.strip(), Path(path.strip())


def register_ingest(node_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = node_subparsers.add_parser(
        "ingest",
        help="load CSV or Parquet files as a new version of a dataset",
        description=(
            "Validate source files against the dataset's schema and publish them as a "
            "new immutable version. Rejected rows are reported by file, line and column "
            "(never by value)."
        ),
    )
    p.add_argument("--data-dir", required=True, type=Path, metavar="PATH")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), metavar="NAME")
    p.add_argument(
        "--table",
        required=True,
        action="append",
        type=_table_file,
        metavar="NAME=PATH",
        help="a source file for a table; repeat for more tables or more files per table",
    )
    p.set_defaults(handler=handle_ingest)


def handle_ingest(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    dataset = DATASETS[args.dataset]
    files: dict[str, list[Path]] = {}
    for name, path in args.table:
        files.setdefault(name, []).append(path)
    try:
        report = ingest_dataset(dataset, files, args.data_dir, SystemClock().now())
    except IngestError as e:
        print("tessera node ingest: failed, nothing was written:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INGEST_ERROR
    sys.stdout.write(report.render())
    return EXIT_OK
