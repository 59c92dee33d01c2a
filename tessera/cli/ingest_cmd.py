"""`tessera node ingest`: load source files as the next version of a dataset.

The node group calls ``register_ingest`` with its subparsers. All the work is
in ``node.ingest.ingest_dataset``; this only parses arguments and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Mapping
from pathlib import Path

from tessera.clock import SystemClock
from tessera.config import ConfigError
from tessera.node import config as node_config
from tessera.node import vault
from tessera.node.ingest import IngestError, ingest_dataset
from tessera.schemas import DATASETS

EXIT_OK = 0
EXIT_INGEST_ERROR = 2


def _table_file(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError("expected NAME=PATH, e.g. episodes=episodes.csv")
    return name.strip(), Path(path.strip())


def _percent(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError("expected a percentage, e.g. 5 or 2.5") from None
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError("must be between 0 and 100")
    return value / 100.0


def register_ingest(node_subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = node_subparsers.add_parser(
        "ingest",
        help="load CSV or Parquet files as a new version of a dataset",
        description=(
            "Validate source files against the dataset's schema, reconcile stacked "
            "returns (one row per episode, one header per child, the latest return "
            "winning) and publish them as a new immutable version. Rejected rows are "
            "reported by file, line, column and rule (never by value). Nothing is "
            "published when no usable row remains, when more rows are refused than "
            "--max-refused allows, or when the content equals the latest version's. "
            "See docs/ingest.md for every rule and report line."
        ),
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=(
            "the node's config: its data_dir, its [encryption] key and, when no --table "
            "is given, the dataset's [datasets.NAME.sources] files"
        ),
    )
    where.add_argument(
        "--data-dir",
        type=Path,
        metavar="PATH",
        help="the node's data folder (the data key then comes from TESSERA_DATA_KEY_FILE)",
    )
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), metavar="NAME")
    p.add_argument(
        "--table",
        action="append",
        type=_table_file,
        metavar="NAME=PATH",
        help=(
            "a source file for a table; repeat for more tables or more files per table "
            "(give one table's yearly files oldest first). For cin, census=FILE takes the "
            "DfE CIN census XML or its flat CSV export"
        ),
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and reconcile, print the whole report, publish nothing",
    )
    p.add_argument(
        "--max-refused",
        type=_percent,
        default=0.05,
        metavar="PERCENT",
        help="refuse the whole ingest when more than this share of rows is refused (default 5)",
    )
    p.set_defaults(handler=handle_ingest)


def _from_config(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[Path, dict[str, list[Path]], vault.DataKey]:
    """The data folder, source files and data key a node config gives for a dataset."""
    cfg = node_config.load(args.config)
    ds = cfg.datasets.get(args.dataset)
    if ds is None:
        raise ConfigError(f"{args.config}: datasets.{args.dataset}: this node does not host it")
    files = {table: list(paths) for table, paths in ds.sources.items()}
    if not args.table and not files:
        raise ConfigError(
            f"{args.config}: datasets.{args.dataset}.sources: no files listed; "
            "list them there or give --table NAME=PATH"
        )
    key = vault.load_key(cfg.encryption, environ, str(args.config))
    return cfg.data_dir, files, key


def handle_ingest(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    dataset = DATASETS[args.dataset]
    files: dict[str, list[Path]] = {}
    key: vault.DataKey | None = None
    data_dir = args.data_dir
    if args.config is not None:
        data_dir, files, key = _from_config(args, environ)
    elif not args.table:
        raise ConfigError("tessera node ingest: give --table NAME=PATH, or --config FILE")
    if args.table:  # files on the command line replace the config's list
        files = {}
        for name, path in args.table:
            files.setdefault(name, []).append(path)
    try:
        with vault.using_key(key) if key is not None else contextlib.nullcontext():
            report = ingest_dataset(
                dataset,
                files,
                data_dir,
                SystemClock().now(),
                dry_run=args.dry_run,
                max_refused_share=args.max_refused,
            )
    except IngestError as e:
        if e.report is not None:
            sys.stdout.write(e.report.render())
        print("tessera node ingest: failed, nothing was written:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INGEST_ERROR
    sys.stdout.write(report.render())
    return EXIT_OK
