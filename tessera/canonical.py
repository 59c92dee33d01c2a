"""Canonical JSON: the one byte encoding that is hashed and signed.

Keys sorted, no insignificant whitespace, UTF-8, no NaN or infinity. A value is
canonical when encoding its decoded form gives back the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


class CanonicalError(ValueError):
    pass


def encode(value: Any) -> bytes:
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise CanonicalError(f"not encodable as canonical JSON: {e}") from None
    return text.encode("utf-8")


def decode(data: bytes, *, max_bytes: int = 1 << 20) -> Any:
    """Decode canonical bytes, refusing anything that is not exactly canonical."""
    if len(data) > max_bytes:
        raise CanonicalError(f"encoding is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except CanonicalError:
        raise
    except (ValueError, RecursionError) as e:
        # ValueError beyond JSONDecodeError and UnicodeDecodeError: an integer literal
        # over Python's 4300-digit conversion limit.
        raise CanonicalError(f"not valid JSON: {type(e).__name__}") from None
    if encode(value) != data:
        raise CanonicalError("bytes are not in canonical form")
    return value


def _refuse_constant(name: str) -> Any:
    raise CanonicalError(f"{name} is not allowed")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
