"""Rotating the coordinator's signing key: its key signs only its audit log, so the
rotation is the log's handover (tessera/rotation.py), with the coordinator stopped:
`tessera coordinator rotate-key --config coordinator.toml --new-key NEW`, then point
`signing_key` at the new key and start it."""

from __future__ import annotations

from pathlib import Path

from tessera import rotation
from tessera.clock import Clock, SystemClock
from tessera.coordinator.config import CoordinatorConfig
from tessera.keys import SigningKey
from tessera.rotation import Rotated

__all__ = ["Rotated", "rotate"]


def rotate(cfg: CoordinatorConfig, new_key_path: Path, clock: Clock | None = None) -> Rotated:
    rotation.refuse_if_serving(cfg.listen, "coordinator")
    old = SigningKey.load(cfg.signing_key)
    new = SigningKey.load(new_key_path)
    db = cfg.state_dir / "coordinator.sqlite"
    if not db.exists():
        return Rotated(old.public.key_id, new.public.key_id, 0, 0)
    rotation.check_ready(db, old, new, new_key_path)
    return rotation.hand_over(db, old, new, clock or SystemClock())
