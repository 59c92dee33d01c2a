"""Secure aggregation, the coordinator's (server) side: it collects each stage's
messages, closes the stage, and at the end rebuilds the masks and releases the sum.
The protocol is stated in tessera.secagg.protocol."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tessera.secagg import crypto, shamir
from tessera.secagg.session import (
    Aborted,
    IntVector,
    Refused,
    Stage,
    check_advertise,
    from_ring,
    raw_public,
    revealed_digest,
    shares_digest,
    validate_session,
)
from tessera.wire.v1 import secagg_pb2 as pb


def _commits_to(context: bytes, owner: int, commitment: bytes) -> Callable[[bytes], bool]:
    def check(seed: bytes) -> bool:
        return crypto.seed_commitment(context, owner, seed) == commitment

    return check


def _opens(advertised_public: bytes) -> Callable[[bytes], bool]:
    def check(private: bytes) -> bool:
        return (
            raw_public(X25519PrivateKey.from_private_bytes(private).public_key())
            == advertised_public
        )

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
            shares_digest(list(msg.shares)),
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
            revealed_digest(list(msg.shares)),
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
