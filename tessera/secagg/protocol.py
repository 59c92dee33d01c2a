"""Secure aggregation: the node's (client) and coordinator's (server) state machines.

No networking: each stage takes protobuf messages in and gives protobuf messages
out, so the same code runs in-process in tests and behind ProtocolRound on the wire.
docs/secure-aggregation.md states the protocol; in brief, for a session with
participants 1..n and threshold t:

0. advertise   node -> server: X25519 keys (encryption c, masking s), signed.
1. share_keys  node -> server: Shamir t-of-U1 shares of its self-mask seed b and of
               its masking private key, AEAD-encrypted to each other node; a
               commitment to b. Server forwards to each node the shares for it (U2).
2. masked      node -> server: y = x + PRG(b) + sum_v +-PRG(s_uv) mod 2^64 (U3).
3. consistency node -> server: a signature over the survivor set U3 it was shown.
4. unmask      node -> server: for each node of U2, exactly one share: of b if it is
               in U3, of the masking key if it dropped. Only once per session, only
               with t signatures over the same U3.
   finish      server: rebuild, check commitments and public keys, remove masks.

Arithmetic is modulo 2^64. An input cell must lie in (-2^56, 2^56), so the sum of up
to 128 nodes stays inside the signed 64-bit range and reads back exactly.

The code is split by side: tessera.secagg.session (limits, stages, errors, roster
and signed digests, shared by both), .client (the node's stages) and .server (the
coordinator's stages). This module is their public face.
"""

from tessera.secagg.client import SecAggClient
from tessera.secagg.server import SecAggResult, SecAggServer
from tessera.secagg.session import (
    KEY_BYTES,
    MAX_ABS_INPUT,
    MAX_PARTICIPANTS,
    MAX_VECTOR_LENGTH,
    MIN_PARTICIPANTS,
    Aborted,
    IntVector,
    Refused,
    SecAggError,
    Stage,
    check_advertise,
    from_ring,
    to_ring,
    validate_session,
)

__all__ = [
    "KEY_BYTES",
    "MAX_ABS_INPUT",
    "MAX_PARTICIPANTS",
    "MAX_VECTOR_LENGTH",
    "MIN_PARTICIPANTS",
    "Aborted",
    "IntVector",
    "Refused",
    "SecAggClient",
    "SecAggError",
    "SecAggResult",
    "SecAggServer",
    "Stage",
    "check_advertise",
    "from_ring",
    "to_ring",
    "validate_session",
]
