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
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tessera import keys
from tessera.secagg import crypto, shamir
from tessera.wire.v1 import secagg_pb2 as pb

IntVector = npt.NDArray[np.int64]

# |cell| < 2^56: 128 nodes' inputs sum to less than 2^63 in magnitude.
MAX_ABS_INPUT = 1 << 56
MAX_PARTICIPANTS = 128
MIN_PARTICIPANTS = 3
MAX_VECTOR_LENGTH = 1 << 22
KEY_BYTES = 32
_PLAINTEXT_BYTES = 2 * shamir.SHARE_BYTES


class Stage(Enum):
    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


class SecAggError(Exception):
    """Base of the protocol's errors; `str()` is safe to show (nothing record-level)."""


class Refused(SecAggError):
    """A message failed a check (binding, signature, stage, set, AEAD tag)."""


class Aborted(SecAggError):
    """The session cannot release a sum; nothing is released."""


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(private: X25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def validate_session(session: pb.SecAggSession) -> dict[int, keys.PublicKey]:
    """The roster as index -> identity key, or Refused for a session no node may join."""
    if not session.session_id:
        raise Refused("the session has no id")
    n = len(session.participants)
    if not MIN_PARTICIPANTS <= n <= MAX_PARTICIPANTS:
        raise Refused(f"a session needs {MIN_PARTICIPANTS} to {MAX_PARTICIPANTS} participants")
    # t > n/2: two disjoint groups can never both collect t consistency signatures.
    if not n // 2 < session.threshold <= n or session.threshold < 2:
        raise Refused("the threshold must be above half the participants and at most all")
    if not 1 <= session.vector_length <= MAX_VECTOR_LENGTH:
        raise Refused("the vector length is out of range")
    if session.stage_deadline_ms == 0:
        raise Refused("the session has no stage deadline")
    roster: dict[int, keys.PublicKey] = {}
    for p in session.participants:
        if not 1 <= p.index <= n or p.index in roster:
            raise Refused("participant indexes must be 1..n, each once")
        try:
            roster[p.index] = keys.PublicKey.from_id(p.node_key_id)
        except keys.KeyError_ as e:
            raise Refused(f"participant {p.index}: {e}") from None
    if len({k.raw for k in roster.values()}) != n:
        raise Refused("a node key appears twice in the roster")
    return roster


def _check_set(values: list[int] | tuple[int, ...], allowed: set[int], what: str) -> list[int]:
    out = list(values)
    if out != sorted(set(out)):
        raise Refused(f"the {what} set must be sorted and without repeats")
    if not set(out) <= allowed:
        raise Refused(f"the {what} set names a node that is not eligible")
    return out


def _shares_digest(shares: list[pb.SecAggEncryptedShare]) -> bytes:
    return crypto.digest(
        b"".join(
            crypto.u32(s.sender)
            + crypto.u32(s.recipient)
            + crypto.lp(s.nonce)
            + crypto.lp(s.ciphertext)
            for s in shares
        )
    )


def _revealed_digest(shares: list[pb.SecAggRevealedShare]) -> bytes:
    return crypto.digest(
        b"".join(crypto.u32(s.owner) + crypto.u32(s.kind) + crypto.lp(s.share) for s in shares)
    )


def to_ring(vector: IntVector) -> crypto.U64Vector:
    return np.asarray(vector, dtype=np.int64).view(np.uint64)


def from_ring(vector: crypto.U64Vector) -> IntVector:
    return np.asarray(vector, dtype=np.uint64).view(np.int64)


@dataclass
class _Held:
    seed: bytes
    mask_key: bytes


class SecAggClient:
    """One node's side of one session. Any refused message ends the session for it."""

    def __init__(self, session: pb.SecAggSession, index: int, identity: keys.SigningKey) -> None:
        self._roster = validate_session(session)
        if self._roster.get(index) != identity.public:
            raise Refused("this node is not that participant of the session")
        self.session = session
        self.index = index
        self.context = crypto.context_digest(session)
        self._t = session.threshold
        self._length = session.vector_length
        self._identity = identity
        self._enc = X25519PrivateKey.generate()
        self._mask = X25519PrivateKey.generate()
        self.stage = Stage.ADVERTISE
        self._peers: dict[int, tuple[bytes, bytes]] = {}  # U1: index -> (c_pk, s_pk)
        self._held: dict[int, _Held] = {}  # shares this node holds, by owner
        self._sharers: list[int] = []
        self._survivors: list[int] = []

    # -- helpers ---------------------------------------------------------------------

    def _enter(self, stage: Stage, context: bytes) -> None:
        if self.stage is not stage:
            raise Refused(f"node {self.index} is at stage {self.stage.value}, not {stage.value}")
        if context != self.context:
            self.stage = Stage.ABORTED
            raise Refused("the message belongs to another session")

    def _fail(self, reason: str) -> Refused:
        self.stage = Stage.ABORTED
        return Refused(reason)

    # -- stages ----------------------------------------------------------------------

    def advertise(self) -> pb.SecAggAdvertise:
        if self.stage is not Stage.ADVERTISE:
            raise Refused(f"node {self.index} has already advertised its keys")
        c_pk, s_pk = _raw(self._enc.public_key()), _raw(self._mask.public_key())
        sig = crypto.sign(
            self._identity, "advertise", self.context, crypto.u32(self.index), c_pk, s_pk
        )
        self.stage = Stage.SHARE_KEYS
        return pb.SecAggAdvertise(
            context=self.context,
            sender=self.index,
            encryption_public=c_pk,
            mask_public=s_pk,
            signature=sig,
        )

    def share_keys(self, advertised: pb.SecAggAdvertiseSet) -> pb.SecAggShareKeys:
        self._enter(Stage.SHARE_KEYS, advertised.context)
        peers: dict[int, tuple[bytes, bytes]] = {}
        for a in advertised.advertisements:
            problem = check_advertise(a, self.context, self._roster)
            if problem:
                raise self._fail(problem)
            if a.sender in peers:
                raise self._fail(f"node {a.sender} advertised twice")
            peers[a.sender] = (a.encryption_public, a.mask_public)
        mine = (_raw(self._enc.public_key()), _raw(self._mask.public_key()))
        if peers.get(self.index) != mine:
            raise self._fail("the advertised set does not carry this node's own keys")
        if len(peers) < self._t:
            raise self._fail(f"only {len(peers)} nodes advertised; the threshold is {self._t}")
        if len({k for pair in peers.values() for k in pair}) != 2 * len(peers):
            raise self._fail("two advertised keys are equal")
        self._peers = peers
        seed = os.urandom(shamir.SECRET_BYTES)
        self._seed = seed
        xs = sorted(peers)
        seed_shares = shamir.split(seed, self._t, xs)
        key_shares = shamir.split(_raw_private(self._mask), self._t, xs)
        self._held[self.index] = _Held(seed_shares[self.index], key_shares[self.index])
        out = []
        for v in xs:
            if v == self.index:
                continue
            secret = self._enc.exchange(X25519PublicKey.from_public_bytes(peers[v][0]))
            nonce, ct = crypto.encrypt_share(
                secret, self.context, self.index, v, seed_shares[v] + key_shares[v]
            )
            out.append(
                pb.SecAggEncryptedShare(sender=self.index, recipient=v, nonce=nonce, ciphertext=ct)
            )
        commitment = crypto.seed_commitment(self.context, self.index, seed)
        sig = crypto.sign(
            self._identity,
            "share_keys",
            self.context,
            crypto.u32(self.index),
            commitment,
            _shares_digest(out),
        )
        self.stage = Stage.MASKED_INPUT
        return pb.SecAggShareKeys(
            context=self.context,
            sender=self.index,
            seed_commitment=commitment,
            shares=out,
            signature=sig,
        )

    def masked_input(self, shared: pb.SecAggShareSet, vector: IntVector) -> pb.SecAggMaskedInput:
        """Mask `vector` (already noisy: this node's release, paid for beforehand)."""
        self._enter(Stage.MASKED_INPUT, shared.context)
        if shared.recipient != self.index:
            raise self._fail("the share set is addressed to another node")
        try:
            sharers = _check_set(list(shared.sharers), set(self._peers), "sharer")
        except Refused as e:
            raise self._fail(str(e)) from None
        if self.index not in sharers:
            raise self._fail("the sharer set leaves out this node")
        if len(sharers) < self._t:
            raise self._fail(f"only {len(sharers)} nodes shared keys; the threshold is {self._t}")
        got: dict[int, bytes] = {}
        for s in shared.shares:
            if s.recipient != self.index or s.sender not in sharers or s.sender == self.index:
                raise self._fail("a share is not from a sharer to this node")
            if s.sender in got:
                raise self._fail(f"two shares from node {s.sender}")
            secret = self._enc.exchange(X25519PublicKey.from_public_bytes(self._peers[s.sender][0]))
            plain = crypto.decrypt_share(
                secret, self.context, s.sender, self.index, s.nonce, s.ciphertext
            )
            if plain is None or len(plain) != _PLAINTEXT_BYTES:
                raise self._fail(f"the share from node {s.sender} failed authentication")
            got[s.sender] = plain
        if set(got) != set(sharers) - {self.index}:
            raise self._fail("shares are missing from some sharers")
        for owner, plain in got.items():
            self._held[owner] = _Held(plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
        values = np.asarray(vector)
        if values.shape != (self._length,) or values.dtype.kind not in "iu":
            raise self._fail("the input is not an integer vector of the session's length")
        wide = values.astype(np.int64)
        if values.dtype.kind == "u" and (values > np.iinfo(np.int64).max).any():
            raise self._fail("an input cell is out of range")
        if (np.abs(wide) >= MAX_ABS_INPUT).any():
            raise self._fail("an input cell is outside the range secure aggregation can sum")
        self._sharers = sharers
        masked = to_ring(wide) + crypto.self_mask(self._seed, self.context, self._length)
        for v in sharers:
            if v == self.index:
                continue
            secret = self._mask.exchange(X25519PublicKey.from_public_bytes(self._peers[v][1]))
            mask = crypto.pairwise_mask(secret, self.context, self.index, v, self._length)
            masked = masked + mask if self.index < v else masked - mask
        data = masked.astype("<u8").tobytes()
        sig = crypto.sign(
            self._identity,
            "masked_input",
            self.context,
            crypto.u32(self.index),
            crypto.digest(data),
        )
        self.stage = Stage.CONSISTENCY
        return pb.SecAggMaskedInput(
            context=self.context, sender=self.index, masked=data, signature=sig
        )

    def consistency(self, request: pb.SecAggConsistencyRequest) -> pb.SecAggConsistency:
        self._enter(Stage.CONSISTENCY, request.context)
        try:
            survivors = _check_set(list(request.survivors), set(self._sharers), "survivor")
        except Refused as e:
            raise self._fail(str(e)) from None
        if self.index not in survivors:
            raise self._fail("the survivor set leaves out this node, which sent its input")
        if len(survivors) < self._t:
            raise self._fail(f"only {len(survivors)} inputs arrived; the threshold is {self._t}")
        self._survivors = survivors
        sig = crypto.sign(
            self._identity,
            "consistency",
            self.context,
            crypto.u32(self.index),
            crypto.indexes(survivors),
        )
        self.stage = Stage.UNMASK
        return pb.SecAggConsistency(context=self.context, sender=self.index, signature=sig)

    def unmask(self, request: pb.SecAggUnmaskRequest) -> pb.SecAggUnmask:
        """Reveal, once, one share per node of U2: never a seed and a key of one node."""
        self._enter(Stage.UNMASK, request.context)
        if list(request.survivors) != self._survivors:
            raise self._fail("the survivor set differs from the one this node signed")
        signers: set[int] = set()
        payload = crypto.indexes(self._survivors)
        for c in request.signatures:
            if len(signers) >= self._t:
                break  # t distinct signers suffice
            if c.context != self.context or c.sender not in self._survivors or c.sender in signers:
                continue
            if crypto.verify(
                self._roster[c.sender],
                c.signature,
                "consistency",
                self.context,
                crypto.u32(c.sender),
                payload,
            ):
                signers.add(c.sender)
        if len(signers) < self._t:
            raise self._fail(
                f"only {len(signers)} nodes signed this survivor set; the threshold is {self._t}"
            )
        survivors = set(self._survivors)
        out = []
        for owner in self._sharers:
            held = self._held[owner]
            if owner in survivors:
                out.append(
                    pb.SecAggRevealedShare(
                        owner=owner, kind=pb.SECAGG_SHARE_KIND_SEED, share=held.seed
                    )
                )
            else:
                out.append(
                    pb.SecAggRevealedShare(
                        owner=owner, kind=pb.SECAGG_SHARE_KIND_MASK_KEY, share=held.mask_key
                    )
                )
        sig = crypto.sign(
            self._identity, "unmask", self.context, crypto.u32(self.index), _revealed_digest(out)
        )
        self.stage = Stage.DONE
        self._held.clear()
        return pb.SecAggUnmask(context=self.context, sender=self.index, shares=out, signature=sig)


def check_advertise(
    a: pb.SecAggAdvertise, context: bytes, roster: dict[int, keys.PublicKey]
) -> str | None:
    if a.context != context:
        return "an advertisement belongs to another session"
    if a.sender not in roster:
        return f"node {a.sender} is not in the session"
    if len(a.encryption_public) != KEY_BYTES or len(a.mask_public) != KEY_BYTES:
        return f"node {a.sender} advertised a key of the wrong length"
    if not crypto.verify(
        roster[a.sender],
        a.signature,
        "advertise",
        context,
        crypto.u32(a.sender),
        a.encryption_public,
        a.mask_public,
    ):
        return f"node {a.sender}'s advertisement is not signed by its identity key"
    return None


def _commits_to(context: bytes, owner: int, commitment: bytes) -> Callable[[bytes], bool]:
    def check(seed: bytes) -> bool:
        return crypto.seed_commitment(context, owner, seed) == commitment

    return check


def _opens(advertised_public: bytes) -> Callable[[bytes], bool]:
    def check(private: bytes) -> bool:
        return _raw(X25519PrivateKey.from_private_bytes(private).public_key()) == advertised_public

    return check


@dataclass(frozen=True)
class SecAggResult:
    """The released sum and exactly who is in it."""

    total: IntVector
    contributors: tuple[int, ...]  # U3: nodes whose inputs are in the sum
    dropped: tuple[int, ...]  # U2 \ U3: shared keys, sent no input; masks removed
    excluded: tuple[int, ...]  # roster \ U2: left before sharing keys


@dataclass
class SecAggServer:
    """The coordinator's side of one session. It sees only masked vectors and shares.

    `transcript` keeps every message the server accepted, in order (tests read it
    as the coordinator's whole view)."""

    session: pb.SecAggSession
    transcript: list[pb.SecAggMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._roster = validate_session(self.session)
        self.context = crypto.context_digest(self.session)
        self._t = self.session.threshold
        self._length = self.session.vector_length
        self.stage = Stage.ADVERTISE
        self._adv: dict[int, pb.SecAggAdvertise] = {}
        self._shares: dict[int, pb.SecAggShareKeys] = {}
        self._masked: dict[int, crypto.U64Vector] = {}
        self._consistency: dict[int, pb.SecAggConsistency] = {}
        self._unmask: dict[int, pb.SecAggUnmask] = {}
        self._u2: list[int] = []
        self._u3: list[int] = []

    def _expect(
        self,
        stage: Stage,
        context: bytes,
        sender: int,
        seen: Mapping[int, object],
        allowed: set[int] | list[int],
    ) -> None:
        if self.stage is not stage:
            raise Refused(f"the session is at stage {self.stage.value}, not {stage.value}")
        if context != self.context:
            raise Refused("the message belongs to another session")
        if sender not in allowed:
            raise Refused(f"node {sender} may not send at stage {stage.value}")
        if sender in seen:
            raise Refused(f"node {sender} already sent its {stage.value} message")

    def _abort(self, reason: str) -> Aborted:
        self.stage = Stage.ABORTED
        return Aborted(reason)

    # stage 0
    def accept_advertise(self, msg: pb.SecAggAdvertise) -> None:
        self._expect(Stage.ADVERTISE, msg.context, msg.sender, self._adv, set(self._roster))
        problem = check_advertise(msg, self.context, self._roster)
        if problem:
            raise Refused(problem)
        self._adv[msg.sender] = msg
        self.transcript.append(pb.SecAggMessage(advertise=msg))

    def close_advertise(self) -> pb.SecAggAdvertiseSet:
        if self.stage is not Stage.ADVERTISE:
            raise Refused("the advertise stage is not open")
        if len(self._adv) < self._t:
            raise self._abort(
                f"only {len(self._adv)} nodes advertised keys; the threshold is {self._t}"
            )
        self.stage = Stage.SHARE_KEYS
        return pb.SecAggAdvertiseSet(
            context=self.context, advertisements=[self._adv[i] for i in sorted(self._adv)]
        )

    # stage 1
    def accept_share_keys(self, msg: pb.SecAggShareKeys) -> None:
        self._expect(Stage.SHARE_KEYS, msg.context, msg.sender, self._shares, set(self._adv))
        if not crypto.verify(
            self._roster[msg.sender],
            msg.signature,
            "share_keys",
            self.context,
            crypto.u32(msg.sender),
            msg.seed_commitment,
            _shares_digest(list(msg.shares)),
        ):
            raise Refused(f"node {msg.sender}'s shares are not signed by its identity key")
        recipients = [s.recipient for s in msg.shares]
        if any(s.sender != msg.sender for s in msg.shares) or sorted(recipients) != sorted(
            set(self._adv) - {msg.sender}
        ):
            raise Refused(
                f"node {msg.sender}'s shares do not cover exactly the other advertised nodes"
            )
        self._shares[msg.sender] = msg
        self.transcript.append(pb.SecAggMessage(share_keys=msg))

    def close_share_keys(self) -> dict[int, pb.SecAggShareSet]:
        if self.stage is not Stage.SHARE_KEYS:
            raise Refused("the share stage is not open")
        if len(self._shares) < self._t:
            raise self._abort(
                f"only {len(self._shares)} nodes shared keys; the threshold is {self._t}"
            )
        self._u2 = sorted(self._shares)
        out = {}
        for v in self._u2:
            forwarded = [
                s for u in self._u2 if u != v for s in self._shares[u].shares if s.recipient == v
            ]
            out[v] = pb.SecAggShareSet(
                context=self.context, recipient=v, sharers=self._u2, shares=forwarded
            )
        self.stage = Stage.MASKED_INPUT
        return out

    # stage 2
    def accept_masked_input(self, msg: pb.SecAggMaskedInput) -> None:
        self._expect(Stage.MASKED_INPUT, msg.context, msg.sender, self._masked, self._u2)
        if len(msg.masked) != 8 * self._length:
            raise Refused(f"node {msg.sender}'s masked vector has the wrong length")
        if not crypto.verify(
            self._roster[msg.sender],
            msg.signature,
            "masked_input",
            self.context,
            crypto.u32(msg.sender),
            crypto.digest(msg.masked),
        ):
            raise Refused(f"node {msg.sender}'s masked vector is not signed by its identity key")
        self._masked[msg.sender] = np.frombuffer(msg.masked, dtype="<u8").astype(np.uint64)
        self.transcript.append(pb.SecAggMessage(masked_input=msg))

    def close_masked_input(self) -> pb.SecAggConsistencyRequest:
        if self.stage is not Stage.MASKED_INPUT:
            raise Refused("the masked-input stage is not open")
        if len(self._masked) < self._t:
            raise self._abort(
                f"only {len(self._masked)} masked inputs arrived; the threshold is {self._t}"
            )
        self._u3 = sorted(self._masked)
        self.stage = Stage.CONSISTENCY
        return pb.SecAggConsistencyRequest(context=self.context, survivors=self._u3)

    # stage 3
    def accept_consistency(self, msg: pb.SecAggConsistency) -> None:
        self._expect(Stage.CONSISTENCY, msg.context, msg.sender, self._consistency, self._u3)
        if not crypto.verify(
            self._roster[msg.sender],
            msg.signature,
            "consistency",
            self.context,
            crypto.u32(msg.sender),
            crypto.indexes(self._u3),
        ):
            raise Refused(f"node {msg.sender}'s consistency signature does not verify")
        self._consistency[msg.sender] = msg
        self.transcript.append(pb.SecAggMessage(consistency=msg))

    def close_consistency(self) -> pb.SecAggUnmaskRequest:
        if self.stage is not Stage.CONSISTENCY:
            raise Refused("the consistency stage is not open")
        if len(self._consistency) < self._t:
            raise self._abort(
                f"only {len(self._consistency)} nodes confirmed the survivor set; "
                f"the threshold is {self._t}"
            )
        self.stage = Stage.UNMASK
        return pb.SecAggUnmaskRequest(
            context=self.context,
            survivors=self._u3,
            signatures=[self._consistency[i] for i in sorted(self._consistency)],
        )

    # stage 4
    def accept_unmask(self, msg: pb.SecAggUnmask) -> None:
        self._expect(Stage.UNMASK, msg.context, msg.sender, self._unmask, sorted(self._consistency))
        if not crypto.verify(
            self._roster[msg.sender],
            msg.signature,
            "unmask",
            self.context,
            crypto.u32(msg.sender),
            _revealed_digest(list(msg.shares)),
        ):
            raise Refused(f"node {msg.sender}'s unmask message is not signed by its identity key")
        survivors = set(self._u3)
        expected = {
            (v, pb.SECAGG_SHARE_KIND_SEED if v in survivors else pb.SECAGG_SHARE_KIND_MASK_KEY)
            for v in self._u2
        }
        got = {(s.owner, s.kind) for s in msg.shares}
        if got != expected or len(msg.shares) != len(expected):
            raise Refused(
                f"node {msg.sender}'s unmask message does not hold one right share per node"
            )
        self._unmask[msg.sender] = msg
        self.transcript.append(pb.SecAggMessage(unmask=msg))

    def finish(self) -> SecAggResult:
        """Rebuild the masks and release the sum, or Aborted: never a wrong sum."""
        if self.stage is not Stage.UNMASK:
            raise Refused("the unmask stage is not open")
        if len(self._unmask) < self._t:
            raise self._abort(
                f"only {len(self._unmask)} nodes sent shares; the threshold is {self._t}"
            )
        shares: dict[tuple[int, int], dict[int, bytes]] = {}
        for holder, msg in self._unmask.items():
            for s in msg.shares:
                shares.setdefault((s.owner, s.kind), {})[holder] = s.share
        survivors = set(self._u3)
        total = np.zeros(self._length, dtype=np.uint64)
        for u in self._u3:
            total = total + self._masked[u]
        for u in self._u3:
            commitment = self._shares[u].seed_commitment
            seed = self._rebuild(
                shares[(u, pb.SECAGG_SHARE_KIND_SEED)], _commits_to(self.context, u, commitment)
            )
            if seed is None:
                raise self._abort(f"node {u}'s self-mask seed could not be rebuilt from its shares")
            total = total - crypto.self_mask(seed, self.context, self._length)
        dropped = [v for v in self._u2 if v not in survivors]
        for v in dropped:
            advertised = self._adv[v].mask_public
            key = self._rebuild(shares[(v, pb.SECAGG_SHARE_KIND_MASK_KEY)], _opens(advertised))
            if key is None:
                raise self._abort(f"node {v}'s masking key could not be rebuilt from its shares")
            private = X25519PrivateKey.from_private_bytes(key)
            for u in self._u3:
                secret = private.exchange(
                    X25519PublicKey.from_public_bytes(self._adv[u].mask_public)
                )
                mask = crypto.pairwise_mask(secret, self.context, u, v, self._length)
                # u added the mask when u < v and subtracted it otherwise: undo that.
                total = total - mask if u < v else total + mask
        self.stage = Stage.DONE
        excluded = tuple(i for i in sorted(self._roster) if i not in self._u2)
        return SecAggResult(from_ring(total).copy(), tuple(self._u3), tuple(dropped), excluded)

    def _rebuild(self, shares: dict[int, bytes], check: Callable[[bytes], bool]) -> bytes | None:
        """A secret from t of `shares` that passes `check`; other t-subsets if one fails."""
        holders = sorted(shares)
        for subset in itertools.islice(itertools.combinations(holders, self._t), 64):
            try:
                secret = shamir.combine({h: shares[h] for h in subset})
            except shamir.ShamirError:
                continue
            if check(secret):
                return secret
        return None
