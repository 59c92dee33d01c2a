"""Secure aggregation, the node's (client) side: one session's stages, message in,
message out. The protocol is stated in tessera.secagg.protocol."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tessera import keys
from tessera.secagg import crypto, shamir
from tessera.secagg.session import (
    MAX_ABS_INPUT,
    IntVector,
    Refused,
    Stage,
    check_advertise,
    raw_public,
    revealed_digest,
    shares_digest,
    to_ring,
    validate_session,
)
from tessera.wire.v1 import secagg_pb2 as pb

_PLAINTEXT_BYTES = 2 * shamir.SHARE_BYTES  # a seed share and a key share


def _raw_private(private: X25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def _check_set(values: list[int] | tuple[int, ...], allowed: set[int], what: str) -> list[int]:
    out = list(values)
    if out != sorted(set(out)):
        raise Refused(f"the {what} set must be sorted and without repeats")
    if not set(out) <= allowed:
        raise Refused(f"the {what} set names a node that is not eligible")
    return out


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
        c_pk, s_pk = raw_public(self._enc.public_key()), raw_public(self._mask.public_key())
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
        mine = (raw_public(self._enc.public_key()), raw_public(self._mask.public_key()))
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
            shares_digest(out),
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
            self._identity, "unmask", self.context, crypto.u32(self.index), revealed_digest(out)
        )
        self.stage = Stage.DONE
        self._held.clear()
        return pb.SecAggUnmask(context=self.context, sender=self.index, shares=out, signature=sig)
