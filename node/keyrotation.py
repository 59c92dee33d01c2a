"""Rotating a node's signing key without breaking its audit chain.

With the node stopped, `tessera node rotate-key --config node.toml --new-key NEW`:

1. checks the audit log verifies under the current key (`signing_key`);
2. appends a handover entry, signed by the current key, naming the new key;
3. appends an acceptance entry signed by the new key (so a handover alone, which
   anyone could write naming someone's public key, never counts);
4. re-signs the rollback watermark with the new key, unchanged otherwise.

Then point `signing_key` at the new key file (or put the new key in its place) and
start the node. `tessera audit verify` accepts the old key or the new one: the
checker follows each handover, and each must be signed by the key before it.
"""

from __future__ import annotations

from pathlib import Path

from tessera import rotation
from tessera.clock import Clock, SystemClock
from tessera.keys import SigningKey
from tessera.node import rollback
from tessera.node.config import NodeConfig
from tessera.rotation import Rotated
from tessera.startup import StartupError

__all__ = ["Rotated", "rotate"]


def rotate(cfg: NodeConfig, new_key_path: Path, clock: Clock | None = None) -> Rotated:
    rotation.refuse_if_serving(cfg.listen, "node")
    old = SigningKey.load(cfg.signing_key)
    new = SigningKey.load(new_key_path)
    ledger = cfg.state_dir / "ledger.sqlite"
    if not ledger.exists():
        return Rotated(old.public.key_id, new.public.key_id, 0, 0)
    rotation.check_ready(ledger, old, new, new_key_path)
    # Read before anything changes: the watermark must verify under the old key.
    try:
        mark = rollback.read_watermark(cfg.watermark_path, cfg.organisation, old.public)
    except rollback.RollbackError as e:
        raise StartupError(f"{e}; nothing was changed") from None
    done = rotation.hand_over(ledger, old, new, clock or SystemClock())
    if mark is not None:
        rollback.watermark_for(cfg, new).advance(
            int(mark["audit_seq"]), str(mark["audit_hash"]), dict(mark["lifetime_rho"])
        )
    return done
