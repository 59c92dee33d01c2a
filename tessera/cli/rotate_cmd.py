"""`tessera node rotate-key` and `tessera coordinator rotate-key`: hand a stopped
server's audit log over to a new signing key."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register_rotate(sub: Any, server: str = "node") -> None:
    p = sub.add_parser(
        "rotate-key",
        help=f"hand the audit log over to a new signing key (stop the {server} first)",
        description="Appends a handover entry signed by the current key and an acceptance "
        "entry signed by the new one"
        + (", and re-signs the rollback watermark" if server == "node" else "")
        + f". Then point signing_key at the new key file and start the {server}.",
    )
    p.add_argument("--config", type=Path, required=True)
    p.add_argument(
        "--new-key", type=Path, required=True, help="the new private key (tessera keys new)"
    )
    p.set_defaults(handler=_rotate, rotate_server=server)


def _rotate(args: argparse.Namespace, environ: dict[str, str]) -> int:
    if args.rotate_server == "coordinator":
        from tessera.coordinator import config as coordinator_config
        from tessera.coordinator import keyrotation as coordinator_rotation

        done = coordinator_rotation.rotate(coordinator_config.load(args.config), args.new_key)
    else:
        from tessera.node import config as node_config
        from tessera.node import keyrotation as node_rotation

        done = node_rotation.rotate(node_config.load(args.config), args.new_key)
    if done.handover_seq:
        print(
            f"audit entries {done.handover_seq} and {done.accepted_seq} hand the log from "
            f"{done.old_key} to {done.new_key}"
        )
    else:
        print(f"no audit log yet: the {args.rotate_server} will start its log with {done.new_key}")
    print(
        f"now set signing_key = {args.new_key.resolve()} in {args.config} and start the "
        f"{args.rotate_server}"
    )
    return 0
