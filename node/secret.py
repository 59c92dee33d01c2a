"""The node's own secret: 32 random bytes kept in its state folder, never sent anywhere.

It keys what must be unpredictable to anyone outside the node (the pseudo-random
order in which a unit's records are kept under a cap, and the opaque version
identifiers analysts see). It is created once, readable by the node's user only.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

SECRET_BYTES = 32
FILE_NAME = "node.secret"


class SecretError(ValueError):
    """The secret file exists but cannot be used."""


def load_or_create(state_dir: Path) -> bytes:
    """The node secret in `state_dir`, created (0600, atomically) on first use."""
    path = Path(state_dir) / FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a secret another process just made
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        data = path.read_bytes()
    if len(data) != SECRET_BYTES:
        raise SecretError(f"{path}: not a node secret ({len(data)} bytes, expected 32)")
    return data
