"""`tessera node rotate-key`: hand a stopped node's audit log over to a new signing key."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register_rotate(node_sub: Any) -> None:
    p = node_sub.add_parser(
        "rotate-key",
        help="hand the audit log over to a new signing key (stop the node first)",
        description="Appends a handover entry signed by the current key and an acceptance "
        "entry signed by the new one, and re-signs the rollback watermark. Then point "
        "signing_key at the new key file and start the node.",
    )
    p.add_argument("--config", type=Path, required=True)
    p.add_argument(
        "--new-key", type=Path, required=True, help="the new private key (tessera keys new)"
    )
    p.set_defaults(handler=_rotate)


def _rotate(args: argparse.Namespace, environ: dict[str, str]) -> int:
    from tessera.node import config, keyrotation

    cfg = config.load(args.config)
    done = keyrotation.rotate(cfg, args.new_key)
    if done.handover_seq:
        print(
            f"audit entries {done.handover_seq} and {done.accepted_seq} hand the log from "
            f"{done.old_key} to {done.new_key}"
        )
    else:
        print(f"no audit log yet: the node will start its log with {done.new_key}")
    print(f"now set signing_key = {args.new_key.resolve()} in {args.config} and start the node")
    return 0
