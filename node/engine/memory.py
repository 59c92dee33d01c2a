"""Handing a frame build's freed memory back to the OS (frame.py, stream.py).

glibc keeps freed heap memory on its free lists and Arrow's pool keeps its own, so a
node's RSS after a build stays near the build's peak unless both are told to let go.
`malloc_trim` is glibc's; elsewhere (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Final, TypeVar

import pyarrow as pa


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back
        return None
    return trim


_TRIM: Final = _malloc_trim()
T = TypeVar("T")


def release() -> None:
    """Return freed memory to the OS: lowers the steady RSS, not the build's peak."""
    pa.default_memory_pool().release_unused()
    if _TRIM is not None:
        _TRIM(0)


def released(value: T) -> T:
    """`value`, once the temporaries that made it are handed back (`release`)."""
    release()
    return value
