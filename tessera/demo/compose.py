"""Lay out a small federation for infra/compose: certificates, keys, synthetic data
and configs for a coordinator and a few nodes that reach each other by service name.

    python -m tessera.demo.compose --root /federation --nodes leeds,bradford,wakefield

Run once by the compose file's `init` service; a second run finds the layout and
leaves it alone. Every person in the data is made up. The keys and certificates
it writes are for this local federation only: a real one brings its own (see
docs/deploy.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

import tomli_w

from tessera.demo import federation

PORT = 50051
STATE = "/var/lib/tessera/state"
DONE = "layout.done"
IMAGE_UID = 10001


def lay_out(root: Path, nodes: Sequence[str], *, scale: float, seed: int) -> bool:
    """Write the layout under `root` unless it is there. Returns True if written."""
    if (root / DONE).exists():
        return False
    layout = federation.build(root, scale=scale, seed=seed)
    chosen = [s for s in layout.nodes if s.slug in nodes]
    missing = sorted(set(nodes) - {s.slug for s in chosen})
    if missing:
        known = ", ".join(s.slug for s in layout.nodes)
        raise SystemExit(f"unknown node(s) {', '.join(missing)}; choose from {known}")
    federation.ingest_all(layout)
    for site in chosen:
        cfg = tomllib.loads(site.config_path.read_text())
        cfg["listen"] = f"0.0.0.0:{PORT}"
        # Each node's ledger and audit log live on its own volume.
        cfg["state_dir"] = STATE
        site.config_path.write_text(tomli_w.dumps(cfg))
        site.port = PORT
    layout.nodes = chosen
    federation.write_coordinator_config(layout, deadline_seconds=10.0)
    cfg = tomllib.loads(layout.coordinator_config.read_text())
    cfg["listen"] = f"0.0.0.0:{PORT}"
    cfg["state_dir"] = STATE
    for n, site in zip(cfg["nodes"], chosen, strict=True):
        n["address"] = f"{site.slug}:{PORT}"
    layout.coordinator_config.write_text(tomli_w.dumps(cfg))
    if os.geteuid() == 0:  # the servers run as the image's user, uid 10001
        for p in [root, *root.rglob("*")]:
            os.chown(p, IMAGE_UID, IMAGE_UID, follow_symlinks=False)
    (root / DONE).write_text("\n".join(s.slug for s in chosen) + "\n")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tessera.demo.compose")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--nodes", default="leeds,bradford,wakefield")
    p.add_argument("--scale", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    written = lay_out(args.root.resolve(), nodes, scale=args.scale, seed=args.seed)
    print(f"{'wrote' if written else 'kept'} the federation layout in {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
