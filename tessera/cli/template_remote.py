"""Placeholder until the coordinator commands land."""

from __future__ import annotations

from typing import Any


def register_remote(sub: Any) -> None:
    return None
