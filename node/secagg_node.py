"""A node's side of secure aggregation: the state behind its ProtocolRound.

The first message of a session (the SecAggSession) comes with the signed template
and request; the node authorises them exactly as for Execute (node/authorize.py, in
secure-aggregation mode), checks that the session is the one the analyst signed for
(id `{request_id}/secagg/{attempt}`, roster = the request's audience in sorted order,
threshold = the template's, and every member's identity key = the one the federation
roster gives for its organisation), and records the session id durably in its ledger, so
no session is ever joined twice, not even after a restart.

Once the session is authorised and joined it starts, in the background, to run the
query and draw its noise share with OpenDP (privacy.secagg_noise_share: the sum of at
least t shares meets the template's ρ), so the masked-input stage need not wait for
either; nothing derived from that vector leaves the node before that stage pays the
ρ through the ledger's one commit path (keyed by the session id: a retry or another
audience is a new session, with fresh noise and a fresh charge). Every step is
audited; a refusal costs nothing unless the spend was already paid.

The other nodes' identity keys come from the federation roster named by the node's
`[secure_aggregation] roster`, signed by k of the node's own trusted approvers and
verified at start (load_roster), never from the coordinator: a coordinator that puts
a key of its own in another node's place is refused before anything is read or paid.
"""

from __future__ import annotations

import logging
import re
import secrets
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera import answers, approvals, canonical, requests, roster, schemas, startup
from tessera.errors import Refusal
from tessera.node import compiler, engine, privacy
from tessera.node.authorize import Authorized, authorize
from tessera.node.catalog import DatasetVersion
from tessera.node.config import NodeConfig
from tessera.node.ledger import NewRelease, RequestRecord
from tessera.node.service import NodeService
from tessera.secagg.protocol import IntVector, Refused
from tessera.secagg.roles import NodeSessions
from tessera.templates import params as params_mod
from tessera.templates.model import measure_sensitivities
from tessera.wire.v1 import secagg_pb2 as pb

log = logging.getLogger("tessera.node")
SESSION_ID = re.compile(r"^(?P<request>.+)/secagg/(?P<attempt>[1-9][0-9]{0,5})$")
NO_ROSTER = (
    "this node has no approver-signed federation roster; secure aggregation needs one "
    "(docs/secure-aggregation.md)"
)


def load_roster(cfg: NodeConfig, where: str = "node config") -> dict[str, roster.Entry] | None:
    """The federation roster of `[secure_aggregation] roster`, verified against the
    node's own trusted approvers and threshold; None if none is configured. A bad
    roster is a StartupError naming the config key."""
    path = cfg.secure_aggregation.roster
    if path is None:
        return None
    key = "secure_aggregation.roster"
    startup.require_files(where, {key: path})
    try:
        doc, signed = roster.load(path)
        entries = roster.verify(
            doc,
            signed,
            list(cfg.trusted_approvers),
            cfg.approvers.threshold,
            identities=cfg.approvers.identities(),
        )
    except roster.RosterError as e:
        raise startup.StartupError(
            f"{where}: {key} = {path}: {e}\n"
            "  fix: have k of the trusted approvers sign the roster (`tessera roster approve`)"
        ) from None
    mine = entries.get(cfg.organisation)
    if mine is None:
        raise startup.StartupError(
            f"{where}: {key} = {path}: the roster does not list {cfg.organisation!r}\n"
            "  fix: use the federation's current roster, or have one made that lists this node"
        )
    return entries


@dataclass
class _Pending:
    auth: Authorized
    signed: requests.SignedRequest
    identity: str | None
    shares: list[tuple[privacy.Calibration, privacy.NoiseShare]]
    rho: float
    cells: int
    # The dataset version read and this node's noisy vector, computed after the join.
    vector: Future[tuple[DatasetVersion, IntVector]] | None = None
    statement: answers.SignedStatement | None = None


@dataclass(frozen=True)
class RoundReply:
    payload: bytes
    statement: bytes = b""
    statement_signature: bytes = b""
    noise_scales: tuple[float, ...] = ()


def session_id(request_id: str, attempt: int) -> str:
    return f"{request_id}/secagg/{attempt}"


class SecAggNode:
    """One node's secure-aggregation sessions. `exact_for_tests` switches the noise
    off (the share is still paid): for in-process tests of the exact sum only; the
    node's server never sets it."""

    def __init__(self, service: NodeService, *, exact_for_tests: bool = False) -> None:
        self.service = service
        self.exact_for_tests = exact_for_tests
        self._pending: dict[str, _Pending] = {}
        self._by_context: dict[bytes, str] = {}
        self._lock = threading.Lock()
        # Noisy vectors are drawn here, between the join and the masked-input stage.
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="secagg-vector")
        self.sessions = NodeSessions(service.key, self._vector_for)
        # Verified once at start (node/main.py checks it first, naming the config key).
        self.roster = load_roster(service.cfg)

    def round(
        self,
        identity: str | None,
        session: str,
        payload: bytes,
        template_bytes: bytes,
        approval_list: list[approvals.Approval],
        signed: requests.SignedRequest | None,
    ) -> RoundReply:
        self.service.check_peer(identity, "ProtocolRound")
        try:
            msg = pb.SecAggMessage.FromString(payload)
        except Exception:
            r = Refusal("INVALID_ARGUMENT", "the payload is not a secure-aggregation message")
            self._audit(identity, session, "INVALID_ARGUMENT", r.message)
            raise r from None
        stage = msg.WhichOneof("body") or "empty"
        try:
            with self._lock:
                if stage == "session":
                    self._join(
                        identity, session, msg.session, template_bytes, approval_list, signed
                    )
                else:
                    body = getattr(msg, stage, None)
                    context = bytes(getattr(body, "context", b""))
                    if self._by_context.get(context) != session:
                        raise Refusal(
                            "INVALID_ARGUMENT", "the message does not belong to the named session"
                        )
                try:
                    reply = self.sessions.handle(msg)
                except Refused as e:
                    raise Refusal("FAILED_PRECONDITION", f"secure aggregation: {e}") from None
                if stage == "session":
                    self._by_context[bytes(reply.advertise.context)] = session
                out = RoundReply(reply.SerializeToString())
                pending = self._pending.get(session)
                if stage == "share_set" and pending is not None and pending.statement:
                    out = RoundReply(
                        out.payload,
                        pending.statement.statement,
                        pending.statement.signature,
                        tuple(share.scale for _, share in pending.shares),
                    )
                if stage == "unmask_request":
                    self._pending.pop(session, None)
        except Refusal as r:
            self._audit(identity, session, r.code, r.message, stage=stage)
            raise
        except (sqlite3.Error, OSError) as e:
            down = Refusal("UNAVAILABLE", "the budget ledger could not be written; nothing sent")
            self._audit(identity, session, down.code, f"{down.message} ({type(e).__name__})")
            raise down from None
        except Exception as e:
            # A fault of ours: audited by its type only (its text may carry values).
            self._audit(identity, session, "INTERNAL", f"internal error ({type(e).__name__})")
            raise
        # A stage that went through pays nothing here (the share is paid, fsynced, in the
        # ledger's commit): its entry need not be fsynced on its own (AuditLog.append).
        self._audit(
            identity, session, "OK", f"secure aggregation stage {stage}", stage=stage, durable=False
        )
        return out

    def _join(
        self,
        identity: str | None,
        session: str,
        s: pb.SecAggSession,
        template_bytes: bytes,
        approval_list: list[approvals.Approval],
        signed: requests.SignedRequest | None,
    ) -> None:
        if signed is None or not template_bytes:
            raise Refusal(
                "INVALID_ARGUMENT",
                "a session's first message must carry the signed template and request",
            )
        if self.roster is None:
            raise Refusal("FAILED_PRECONDITION", NO_ROSTER)
        cfg = self.service.cfg
        auth = authorize(
            cfg,
            template_bytes,
            approval_list,
            signed,
            self.service.clock.now(),
            secure_aggregation=True,
        )
        t = auth.template
        m = SESSION_ID.match(s.session_id)
        if s.session_id != session or m is None or m["request"] != auth.request.request_id:
            raise Refusal("INVALID_ARGUMENT", "the session id is not {request_id}/secagg/{attempt}")
        if s.threshold != t.access.threshold:
            raise Refusal("INVALID_ARGUMENT", "the session's threshold is not the template's")
        audience = sorted(set(auth.request.audience))
        if len(s.participants) != len(audience):
            raise Refusal("INVALID_ARGUMENT", "the session's roster is not the request's audience")
        mine = audience.index(cfg.organisation) + 1
        me = [p for p in s.participants if p.index == mine]
        if len(me) != 1 or me[0].node_key_id != self.service.key.public.key_id:
            raise Refusal("INVALID_ARGUMENT", "the roster does not place this node at its index")
        if sorted(p.index for p in s.participants) != list(range(1, len(audience) + 1)):
            raise Refusal("INVALID_ARGUMENT", "the session's roster is not indexed 1..n")
        for p in s.participants:
            org = audience[p.index - 1]
            entry = self.roster.get(org)
            if entry is None:
                raise Refusal(
                    "FAILED_PRECONDITION", f"{org!r} is not in this node's federation roster"
                )
            if p.node_key_id != entry.node_key:
                raise Refusal(
                    "PERMISSION_DENIED",
                    f"the session's key for {org!r} is not the one in the federation roster "
                    "signed by the approvers",
                )
        version = self.service.catalog.latest(t.dataset)
        if version is None:
            raise Refusal("FAILED_PRECONDITION", f"no version of {t.dataset} has been loaded")
        exclude = t.purpose != schemas.DIRECT_CARE
        query = compiler.compile_query(
            t, auth.params, exclude_opted_out=exclude, order_key=self.service.secret
        )
        try:
            calibrations = privacy.calibrate(t.privacy, measure_sensitivities(t.statistic))
            if calibrations[0].kind != "rho":
                raise privacy.CalibrationError("secure aggregation needs a rho (zCDP) template")
            shares = [
                (
                    c,
                    privacy.secagg_noise_share(
                        c.loss, c.sensitivity.l2, s.threshold, query.n_cells, c.sensitivity.l1
                    ),
                )
                for c in calibrations
            ]
        except privacy.CalibrationError as e:
            raise Refusal("INVALID_ARGUMENT", f"the template's privacy cost: {e}") from None
        cells = query.n_cells * len(calibrations)
        if s.vector_length != cells:
            raise Refusal("INVALID_ARGUMENT", f"the session's vector length is not {cells}")
        rho = privacy.compose_rho([share.rho for _, share in shares])
        policy = cfg.policy(cfg.accountant_of(t.dataset))
        self.service._check_affordable(policy, rho)
        # Forget what belonged to sessions that ended or expired.
        live = self.sessions.open_session_ids()
        for sid in [sid for sid in self._pending if sid not in live]:
            del self._pending[sid]
        self._by_context = {c: sid for c, sid in self._by_context.items() if sid in live}
        if not self.service.ledger.join_secagg_session(s.session_id):
            raise Refusal("ALREADY_EXISTS", "this node has already joined a session with that id")
        pending = _Pending(auth, signed, identity, shares, rho, cells)
        # Authorised and joined: the data may be read now. The vector stays on the node
        # until the masked-input stage has paid for it (_vector_for).
        pending.vector = self._workers.submit(self._noisy_vector, pending)
        self._pending[s.session_id] = pending

    def _noisy_vector(self, p: _Pending) -> tuple[DatasetVersion, IntVector]:
        svc, auth = self.service, p.auth
        t = auth.template
        version = svc.catalog.latest(t.dataset)
        if version is None:
            raise Refused(f"no version of {t.dataset} has been loaded")
        exclude = t.purpose != schemas.DIRECT_CARE
        exact = engine.answer(
            svc.catalog, version, t, auth.params, exclude_opted_out=exclude, order_key=svc.secret
        )
        # Test-only: in-process tests set `secagg_exact_for_tests` on the service object.
        exact_only = self.exact_for_tests or bool(getattr(svc, "secagg_exact_for_tests", False))
        if exact_only:
            parts = [exact[c.name] for c, _ in p.shares]
        else:
            parts = [privacy.add_noise_share(share, exact[c.name]) for c, share in p.shares]
        return version, np.concatenate(parts).astype(np.int64)

    def _vector_for(self, session: pb.SecAggSession) -> IntVector:
        p = self._pending.get(session.session_id)
        if p is None or p.vector is None:
            raise Refused("this node holds no authorisation for that session")
        svc, auth = self.service, p.auth
        t = auth.template
        version, vector = p.vector.result()  # re-raises what the query raised
        rho = p.rho  # paid in full even with the noise off
        params_json = params_mod.to_json(auth.params)
        answer_key = canonical.sha256_hex(
            canonical.encode(
                {"secagg": session.session_id, "d": auth.digest, "c": version.content_sha256}
            )
        )
        # The payload stays on the node; its salted digest is all the statement names.
        payload = canonical.encode(
            {
                "salt": secrets.token_hex(16),
                "session": session.session_id,
                "kind": "rho",
                "cost": rho,
                "scales": [share.scale for _, share in p.shares],
            }
        )
        policy = svc.cfg.policy(svc.cfg.accountant_of(t.dataset))
        req = RequestRecord(
            session.session_id,
            p.signed.hash,
            auth.request.analyst_key,
            f"{auth.request.nonce}/{session.session_id}",
        )
        body = svc._audit_body(p.identity, auth.request, "OK", "secure-aggregation share paid")
        body["session_id"] = session.session_id
        body["dataset_version"] = version.version
        release = NewRelease(
            answer_key,
            t.dataset,
            version.version,
            auth.digest,
            params_json,
            "rho",
            rho,
            payload,
            policy.name,
            rho,
        )
        committed = svc.ledger.commit(req, answer_key, release, policy, body)
        if committed.from_cache:
            raise Refused("this session's share was already released")
        p.statement = answers.sign(
            answers.Statement(
                organisation=svc.cfg.organisation,
                node_key=svc.key.public.key_id,
                request_id=session.session_id,
                request_hash=p.signed.hash,
                template_digest=auth.digest,
                answer_key=answer_key,
                dataset=t.dataset,
                dataset_version=version.version,
                payload_sha256=answers.payload_digest(committed.payload),
                cost_kind="rho",
                cost=rho,
                charged=committed.charged,
                from_cache=False,
                audit_seq=committed.audit.seq,
                audit_hash=committed.audit.hash,
            ),
            svc.key,
        )
        return vector

    def _audit(
        self,
        identity: str | None,
        session: str,
        outcome: str,
        message: str,
        *,
        stage: str = "",
        durable: bool = True,
    ) -> None:
        p = self._pending.get(session)
        body: dict[str, Any] = self.service._audit_body(
            identity, p.auth.request if p else None, outcome, message, auth=p.auth if p else None
        )
        body.update(method="ProtocolRound", session_id=session[:300], stage=stage)
        try:
            self.service.ledger.audit(body, durable=durable)
        except Exception as e:  # best effort, as for Execute's refusals
            log.error("audit write failed (%s)", type(e).__name__)
