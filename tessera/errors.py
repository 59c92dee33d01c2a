"""Refusals: a precise gRPC status name and a message safe to show the caller.

Messages never carry record-level values; they name fields, limits and rules.
"""

from __future__ import annotations

# The status names design.md allows, beside OK.
STATUSES = (
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "RESOURCE_EXHAUSTED",
    "ALREADY_EXISTS",
    "DEADLINE_EXCEEDED",
    "UNAVAILABLE",
    "UNIMPLEMENTED",
    "NOT_FOUND",
    # Only for a fault in Tessera itself, never for anything a caller sent.
    "INTERNAL",
)


class Refusal(Exception):
    def __init__(self, code: str, message: str) -> None:
        if code not in STATUSES:
            raise ValueError(f"unknown status {code}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
