"""`tessera node serve|ingest|budget|adopt-ledger|keygen|backup|restore|rotate-data-key`: a node
operator's commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from tessera.cli.output import add_json_arg, json_to_stdout, write_json

if TYPE_CHECKING:  # the node's modules load only when a command needs them
    from tessera.node.config import NodeConfig
    from tessera.node.vault import DataKey


def register(sub: Any) -> None:
    p = sub.add_parser("node", help="run and operate a node")
    node_sub = p.add_subparsers(dest="node_command", required=True, metavar="COMMAND")

    serve = node_sub.add_parser("serve", help="serve NodeService over mutual TLS")
    serve.add_argument("--config", type=Path, required=True)
    from tessera import observability

    observability.add_arguments(serve)
    serve.set_defaults(handler=_serve)

    budget = node_sub.add_parser("budget", help="show spent and remaining privacy budget")
    budget.add_argument("--config", type=Path, required=True)
    add_json_arg(budget, "each dataset's version, content hash and accountant spend")
    budget.set_defaults(handler=_budget)

    adopt = node_sub.add_parser(
        "adopt-ledger",
        help="write a new rollback watermark for the ledger as it stands (after losing it)",
        description="The node refuses to start when its rollback watermark is missing but "
        "its ledger has paid answers. If you lost the watermark (not the ledger), and you "
        "are sure the state folder is the latest, this records the ledger as it stands.",
    )
    adopt.add_argument("--config", type=Path, required=True)
    adopt.set_defaults(handler=_adopt_ledger)

    keygen = node_sub.add_parser(
        "keygen",
        help="write a new data key (encryption at rest) to a new file, 0600",
        description="The key encrypts dataset versions, ledger fields and backups. Keep it "
        "outside the node's state and data folders, and keep a copy somewhere safe: "
        "without it nothing the node stored can be read.",
    )
    keygen.add_argument("--out", type=Path, required=True, metavar="FILE")
    keygen.set_defaults(handler=_keygen)

    backup = node_sub.add_parser(
        "backup",
        help="write an online, verified, encrypted backup of ledger, audit log and versions",
    )
    backup.add_argument("--config", type=Path, required=True)
    backup.add_argument("--out", type=Path, required=True, metavar="FILE")
    backup.set_defaults(handler=_backup)

    restore = node_sub.add_parser(
        "restore",
        help="restore a backup into a stopped node with an empty state folder",
        description="Refused if the backup would roll spend back (it is older than what "
        "the node already paid out), if its audit log does not verify, or if the state "
        "folder already holds a ledger.",
    )
    restore.add_argument("--config", type=Path, required=True)
    restore.add_argument("archive", type=Path, metavar="FILE")
    restore.set_defaults(handler=_restore)

    rotate = node_sub.add_parser(
        "rotate-data-key",
        help="re-seal versions and ledger fields under a new data key (node stopped)",
        description="Stop the node, run this, then point the config's [encryption] at the "
        "new key and start the node. Running it again with the same keys finishes an "
        "interrupted rotation. Backups taken before stay readable with the old key only.",
    )
    rotate.add_argument("--config", type=Path, required=True)
    rotate.add_argument("--new-key", type=Path, required=True, metavar="FILE")
    rotate.set_defaults(handler=_rotate_data_key)

    seal = node_sub.add_parser(
        "seal-ledger",
        help="encrypt the stored answers of a ledger from before encryption at rest",
        description="Once, with the node stopped, after upgrading a node whose ledger "
        "predates encryption at rest.",
    )
    seal.add_argument("--config", type=Path, required=True)
    seal.set_defaults(handler=_seal_ledger)

    from tessera.cli.ingest_cmd import register_ingest

    register_ingest(node_sub)

    from tessera.cli.rotate_cmd import register_rotate

    register_rotate(node_sub)


def _serve(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from tessera import observability
    from tessera.node import config, main

    return main.serve_forever(
        config.load(args.config), observability.options_from(args), str(args.config)
    )


def _budget(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from tessera.clock import SystemClock
    from tessera.node import config, main

    cfg = config.load(args.config)
    service = main.build_service(cfg, SystemClock())
    try:
        rows = service.status()
    finally:
        service.ledger.close()
        service.catalog.close()
    # The operator's view: the content hash stays here (analysts see an opaque id).
    write_json(
        args,
        [
            {
                "dataset": d.name,
                "version": d.version,
                "content_sha256": d.content_sha256,
                "accountant": d.accountant,
                "period": d.period,
                "limit": dict(d.budget_total),
                "spent": dict(d.budget_spent),
                "epsilon_at_delta": d.epsilon_at_delta,
                "delta": d.delta,
            }
            for d in rows
        ],
    )
    if json_to_stdout(args):
        return 0
    table = Table(title=f"Privacy budget: {cfg.organisation} (zCDP rho per accountant)")
    cols = ("dataset", "version", "content sha256", "accountant", "limit", "spent", "left")
    for col in (*cols, "epsilon at delta"):
        table.add_column(col, justify="right" if col in ("limit", "spent", "left") else "left")
    for d in rows:
        for kind, total in d.budget_total.items():
            spent = d.budget_spent[kind]
            table.add_row(
                d.name,
                str(d.version),
                d.content_sha256[:16],
                d.accountant + (f" ({d.period})" if d.period else ""),
                f"{total:g}",
                f"{spent:.6g}",
                f"{max(total - spent, 0):.6g}",
                f"{d.epsilon_at_delta:.4g} at {d.delta:g}",
            )
    Console().print(table)
    return 0


def _adopt_ledger(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from tessera.node import config, rollback

    cfg = config.load(args.config)
    seq, spent = rollback.adopt(cfg, cfg.state_dir / "ledger.sqlite")
    totals = ", ".join(f"{a} rho {r:.6g}" for a, r in sorted(spent.items())) or "nothing spent"
    print(f"watermark {cfg.watermark_path}: audit entry {seq}; {totals}")
    return 0


def _fail(prog: str, message: str) -> int:
    print(f"tessera node {prog}: {message}", file=sys.stderr)
    return 2


def _keygen(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from tessera.node import vault

    key = vault.DataKey.generate()
    try:
        vault.write_key_file(args.out, key)
    except (vault.VaultError, OSError) as e:
        return _fail("keygen", str(e) if isinstance(e, vault.VaultError) else f"{args.out}: {e}")
    print(f"wrote data key {key.key_id} to {args.out} (0600); keep a copy somewhere safe")
    return 0


def _config_and_key(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[NodeConfig, DataKey]:
    """The node config named by --config and the data key its [encryption] names."""
    from tessera.node import config, vault

    cfg = config.load(args.config)
    return cfg, vault.load_key(cfg.encryption, environ, str(args.config))


def _backup(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from tessera.config import ConfigError
    from tessera.node import backup, vault

    try:
        cfg, key = _config_and_key(args, environ)
        summary = backup.backup(cfg, args.out, key)
    except (ConfigError, vault.VaultError, backup.BackupError) as e:
        return _fail("backup", str(e))
    print(
        f"wrote {args.out}: {summary.audit_entries} audit entries (verified), "
        f"{summary.versions} dataset versions, {summary.files} files, "
        f"encrypted under data key {key.key_id}"
    )
    return 0


def _restore(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from tessera.config import ConfigError
    from tessera.node import backup, rollback, vault

    try:
        cfg, key = _config_and_key(args, environ)
        summary = backup.restore(cfg, args.archive, key)
    except (ConfigError, vault.VaultError, backup.BackupError, rollback.RollbackError) as e:
        return _fail("restore", str(e))
    print(
        f"restored {args.archive} (taken {summary.created}): {summary.audit_entries} audit "
        f"entries verified, {summary.versions} dataset versions"
    )
    return 0


def _rotate_data_key(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from tessera.config import ConfigError
    from tessera.node import rekey, vault

    try:
        cfg, old = _config_and_key(args, environ)
        new = vault.load_key(vault.EncryptionConfig(key_file=args.new_key), {}, "--new-key")
        done = rekey.rotate(cfg, old, new)
    except (ConfigError, vault.VaultError) as e:
        return _fail("rotate-data-key", str(e))
    print(
        f"re-sealed {done.versions} dataset versions and {done.fields} stored answers under "
        f"data key {new.key_id} ({done.already} already were); now point [encryption] in "
        f"{args.config} at {args.new_key} and start the node"
    )
    return 0


def _seal_ledger(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from tessera.config import ConfigError
    from tessera.node import rekey, vault

    try:
        cfg, key = _config_and_key(args, environ)
        done = rekey.seal_plaintext_fields(cfg.state_dir / "ledger.sqlite", key)
    except (ConfigError, vault.VaultError) as e:
        return _fail("seal-ledger", str(e))
    print(f"sealed {done} stored answers under data key {key.key_id}")
    return 0
