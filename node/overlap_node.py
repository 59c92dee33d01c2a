"""A node's side of an overlap count: the state behind its ProtocolRound.

A session is `{request_id}/overlap/{attempt}` (tessera.overlap.session). OPEN carries
the signed template and request; the node authorises them as for Execute, in overlap
mode (node/authorize.py: its party index is its place in the signed audience, and it
must host that party's dataset), checks every organisation against the approver-signed
federation roster, records the session id durably (never joined twice, as for secure
aggregation), and only then reads its members. It answers with its hello signed by its
identity key, so the coordinator cannot put a sealing key of its own in a node's place;
HELLOS checks every other hello against the roster's key for that party's organisation.

START pays the node's charge through the ledger's one commit path (keyed by the
session id, so a retry is a new session with a fresh charge) before any blinded set
leaves; DELIVER refuses to send one out unpaid. The party that is not the noise party
and comes first (session.counter_party) also hosts the Counter and, at RESULT, signs
the release. Every step is audited; a refusal before START costs nothing.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tessera import answers, approvals, canonical, requests, roster, schemas
from tessera.errors import Refusal
from tessera.node import privacy
from tessera.node.authorize import Authorized, authorize, overlap_party
from tessera.node.ledger import NewRelease, RequestRecord
from tessera.node.overlap_release import release_payload
from tessera.node.overlap_source import members
from tessera.node.secagg_node import RoundReply
from tessera.node.service import NodeService
from tessera.overlap import protocol
from tessera.overlap import session as osession
from tessera.overlap.seal import SealError
from tessera.overlap.spec import overlap_query
from tessera.templates import params as params_mod
from tessera.wire.v1 import overlap_pb2 as pb

log = logging.getLogger("tessera.node")
MAX_OPEN = 16
REPLY_BYTES = 3 << 20
LIFETIME_S = 900.0  # a session still open after this is forgotten
NO_ROSTER = (
    "this node has no approver-signed federation roster; overlap counts need one "
    "([secure_aggregation] roster, docs/overlap.md)"
)


class _Noise:
    """The library's NoiseSource, drawn by OpenDP through node/privacy.py."""

    def dummies(self, epsilon: float, cells: int) -> protocol.DummyDraw:
        d = privacy.overlap_dummies(epsilon, cells)
        return protocol.DummyDraw(
            [int(c) for c in d.counts], d.shift, d.scale, d.variance, d.epsilon, d.delta
        )

    def counts(self, epsilon: float, exact: Any) -> list[int]:
        return privacy.overlap_counts(epsilon, list(exact))


@dataclass
class _Session:
    auth: Authorized
    signed: requests.SignedRequest
    identity: str | None
    index: int
    query: protocol.OverlapQuery
    party: protocol.Party
    counter: protocol.Counter | None
    hellos: list[pb.OverlapSignedHello]
    dataset: str
    version: Any
    cost: float
    rho: float
    view_epsilon: float
    opened: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    outbox: deque[pb.OverlapRouted] = field(default_factory=deque)
    greeted: bool = False
    plan: bool = False
    paid: bool = False
    charged: float = 0.0


def _routed(query: protocol.OverlapQuery, messages: list[bytes]) -> list[pb.OverlapRouted]:
    return [pb.OverlapRouted(to=protocol.recipient(query, m), message=m) for m in messages]


class OverlapNode:
    """One node's overlap sessions. `exact_for_tests` switches the noise off (the charge
    is still paid): for in-process tests of exact counts only; the server never sets it."""

    def __init__(
        self,
        service: NodeService,
        federation: dict[str, roster.Entry] | None,
        *,
        exact_for_tests: bool = False,
    ) -> None:
        self.service = service
        self.roster = federation
        self.exact_for_tests = exact_for_tests
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

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
            msg = pb.OverlapRound.FromString(payload)
            action = pb.OverlapAction.Name(msg.action).removeprefix("OVERLAP_ACTION_").lower()
        except Exception:
            r = Refusal("INVALID_ARGUMENT", "the payload is not an overlap round message")
            self._audit(identity, session, r.code, r.message)
            raise r from None
        try:
            if msg.action == pb.OVERLAP_ACTION_OPEN:
                out = self._open(identity, session, template_bytes, approval_list, signed)
            elif msg.action == pb.OVERLAP_ACTION_CLOSE:
                with self._lock:
                    self._sessions.pop(session, None)
                out = RoundReply(pb.OverlapRound(action=msg.action).SerializeToString())
            else:
                s = self._find(session)
                with s.lock:
                    out = self._step(s, session, msg)
        except Refusal as r:
            self._audit(identity, session, r.code, r.message, stage=action)
            self._drop(session, msg.action)
            raise
        except (protocol.OverlapError, SealError) as e:
            # The library's reasons name steps and parties, never a record value.
            bad = Refusal("INVALID_ARGUMENT", f"overlap: {e}")
            self._audit(identity, session, bad.code, bad.message, stage=action)
            self._drop(session, msg.action)
            raise bad from None
        except (sqlite3.Error, OSError) as e:
            down = Refusal("UNAVAILABLE", "the budget ledger could not be written; nothing sent")
            self._audit(identity, session, down.code, f"{down.message} ({type(e).__name__})")
            raise down from None
        except Exception as e:
            self._audit(identity, session, "INTERNAL", f"internal error ({type(e).__name__})")
            raise
        self._audit(identity, session, "OK", f"overlap step {action}", stage=action)
        return out

    def _drop(self, session: str, action: int) -> None:
        """A refused step ends the session (a refused OPEN leaves any earlier one alone):
        no message of it is accepted again, and its keys and members are forgotten."""
        if action != pb.OVERLAP_ACTION_OPEN:
            with self._lock:
                self._sessions.pop(session, None)

    def _find(self, session: str) -> _Session:
        with self._lock:
            s = self._sessions.get(session)
        if s is None:
            raise Refusal("FAILED_PRECONDITION", "no open overlap session has that id")
        return s

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [k for k, s in self._sessions.items() if now - s.opened > LIFETIME_S]:
            del self._sessions[sid]  # its keys and members go with it

    # -- OPEN ----------------------------------------------------------------------

    def _open(
        self,
        identity: str | None,
        session: str,
        template_bytes: bytes,
        approval_list: list[approvals.Approval],
        signed: requests.SignedRequest | None,
    ) -> RoundReply:
        if signed is None or not template_bytes:
            raise Refusal("INVALID_ARGUMENT", "OPEN must carry the signed template and request")
        if self.roster is None:
            raise Refusal("FAILED_PRECONDITION", NO_ROSTER)
        svc, cfg = self.service, self.service.cfg
        auth = authorize(cfg, template_bytes, approval_list, signed, svc.clock.now(), overlap=True)
        t, request = auth.template, auth.request
        m = osession.SESSION_ID.match(session)
        if m is None or m["request"] != request.request_id:
            raise Refusal(
                "INVALID_ARGUMENT", "the session id is not {request_id}/overlap/{attempt}"
            )
        for org in request.audience:
            if org not in self.roster:
                raise Refusal(
                    "FAILED_PRECONDITION", f"{org!r} is not in this node's federation roster"
                )
        index = overlap_party(cfg, t, request)
        assert t.overlap is not None  # authorize checked it
        dataset = t.overlap.datasets[index].dataset
        version = svc.catalog.latest(dataset)
        if version is None:
            raise Refusal("FAILED_PRECONDITION", f"no version of {dataset} has been loaded")
        epsilon = t.privacy.epsilon
        if epsilon is None:
            raise Refusal("INVALID_ARGUMENT", "an overlap template's privacy cost is an epsilon")
        try:
            view, own = privacy.overlap_charge(epsilon)
        except privacy.CalibrationError as e:
            raise Refusal("INVALID_ARGUMENT", f"the template's privacy cost: {e}") from None
        rho = privacy.compose_rho([privacy.pure_to_rho(view), privacy.pure_to_rho(own)])
        svc._check_affordable(cfg.policy(cfg.accountant_of(dataset)), rho)
        qid = osession.query_id(session, signed.hash)
        # Test-only: in-process tests set `overlap_exact_for_tests` on the service object.
        exact = self.exact_for_tests or bool(getattr(svc, "overlap_exact_for_tests", False))
        query = overlap_query(t, auth.params, qid, None if exact else epsilon)
        with self._lock:
            self._expire()
            if len(self._sessions) >= MAX_OPEN:
                raise Refusal("RESOURCE_EXHAUSTED", "too many overlap sessions are open; try later")
            if not svc.ledger.join_secagg_session(session):
                raise Refusal(
                    "ALREADY_EXISTS", "this node has already joined a session with that id"
                )
        # Authorised and joined: only now is the data read.
        cursor = svc.catalog.connect(version).cursor()
        try:
            rows = members(
                cursor,
                t,
                auth.params,
                index,
                exclude_opted_out=t.purpose != schemas.DIRECT_CARE,
                order_key=svc.secret,
            )
        finally:
            cursor.close()
        noise = None if query.epsilon is None else _Noise()
        party = protocol.Party(query, index, rows, noise)
        counter = protocol.Counter(query) if index == osession.counter_party(query) else None
        hellos = [pb.OverlapSignedHello(party=index, hello=party.hello())]
        if counter is not None:
            hellos.append(pb.OverlapSignedHello(party=protocol.COUNTER, hello=counter.hello()))
        for h in hellos:
            h.signature = osession.sign_hello(svc.key, h.hello)
        s = _Session(
            auth, signed, identity, index, query, party, counter, list(hellos), dataset,
            version, view + own, rho, view, time.monotonic(),
        )  # fmt: skip
        with self._lock:
            self._sessions[session] = s
        return RoundReply(
            pb.OverlapRound(action=pb.OVERLAP_ACTION_OPEN, hellos=hellos).SerializeToString()
        )

    # -- later steps ---------------------------------------------------------------

    def _step(self, s: _Session, session: str, msg: pb.OverlapRound) -> RoundReply:
        out = pb.OverlapRound(action=msg.action)
        statement = answers.SignedStatement(b"", b"")
        if s.outbox and msg.action != pb.OVERLAP_ACTION_PULL:
            raise Refusal("FAILED_PRECONDITION", "the node's earlier messages were not all pulled")
        if msg.action == pb.OVERLAP_ACTION_HELLOS:
            s.outbox.extend(self._hellos(s, list(msg.hellos)))
        elif msg.action == pb.OVERLAP_ACTION_DELIVER:
            s.outbox.extend(self._deliver(s, list(msg.messages)))
        elif msg.action == pb.OVERLAP_ACTION_START:
            statement = self._pay(s, session)
            s.outbox.extend(_routed(s.query, s.party.start()))
        elif msg.action == pb.OVERLAP_ACTION_PULL:
            pass
        elif msg.action == pb.OVERLAP_ACTION_RESULT:
            release, statement = self._release(s, session)
            out.release = release
            with self._lock:
                self._sessions.pop(session, None)
        else:
            raise Refusal("INVALID_ARGUMENT", "no such overlap step")
        # One page per reply, within the message limit; the coordinator pulls the rest.
        room = min(REPLY_BYTES, self.service.cfg.max_message_bytes // 2)
        while s.outbox and (not out.messages or room >= len(s.outbox[0].message)):
            m = s.outbox.popleft()
            room -= len(m.message)
            out.messages.append(m)
        out.more = bool(s.outbox)
        return RoundReply(out.SerializeToString(), statement.statement, statement.signature)

    def _hellos(self, s: _Session, hellos: list[pb.OverlapSignedHello]) -> list[pb.OverlapRouted]:
        if s.greeted:
            raise Refusal("FAILED_PRECONDITION", "this session's hellos have already arrived")
        assert self.roster is not None
        q, audience = s.query, s.auth.request.audience
        counter_org = audience[osession.counter_party(q)]
        own = {h.party: h.hello for h in s.hellos}
        want = {*range(q.n), protocol.COUNTER}
        got: dict[int, bytes] = {}
        for h in hellos:
            if h.party not in want or h.party in got:
                raise Refusal("INVALID_ARGUMENT", "a hello for no party, or a second one")
            org = counter_org if h.party == protocol.COUNTER else audience[h.party]
            if not osession.hello_verifies(self.roster[org].node_key, h.hello, h.signature):
                raise Refusal(
                    "PERMISSION_DENIED",
                    f"the hello for {org!r} is not signed by the node key the federation "
                    "roster gives it",
                )
            if h.party in own and h.hello != own[h.party]:
                raise Refusal(
                    "INVALID_ARGUMENT", "a hello in this node's place that is not its own"
                )
            got[h.party] = h.hello
        if set(got) != want:
            raise Refusal("INVALID_ARGUMENT", "HELLOS must carry every party's and the counter's")
        for p, hello in sorted(got.items()):
            if p != s.index:  # the counter's hello too, when this node hosts it
                s.party.handle(hello)
        s.greeted = True
        if q.epsilon is not None and s.index == q.noiser:
            s.plan = True
            return _routed(q, s.party.dummy_plan())
        return []

    def _deliver(self, s: _Session, messages: list[pb.OverlapRouted]) -> list[pb.OverlapRouted]:
        if not s.greeted:
            raise Refusal("FAILED_PRECONDITION", "messages before the hellos")
        out: list[bytes] = []
        for m in messages:
            if m.to == protocol.COUNTER and s.counter is not None:
                s.counter.handle(m.message)
            elif m.to == s.index:
                replies = s.party.handle(m.message)
                if replies and not s.paid:
                    raise Refusal(
                        "FAILED_PRECONDITION",
                        "a blinded set before this node has paid its charge (START)",
                    )
                body = pb.OverlapMessage.FromString(m.message)
                s.plan = s.plan or body.WhichOneof("body") == "sealed"
                out += replies
            else:
                raise Refusal("INVALID_ARGUMENT", "a message for a party this node is not")
        return _routed(s.query, out)

    def _pay(self, s: _Session, session: str) -> answers.SignedStatement:
        if s.paid or not s.greeted:
            raise Refusal("FAILED_PRECONDITION", "START comes once, after the hellos")
        if s.query.epsilon is not None and not s.plan:
            raise Refusal("FAILED_PRECONDITION", "the dummy plan has not arrived")
        svc, auth, q = self.service, s.auth, s.query
        cfg = svc.cfg
        delta = min(1.0, len(q.view_cells()) * 1e-10) if q.epsilon is not None else 0.0
        answer_key = canonical.sha256_hex(
            canonical.encode({"overlap": session, "d": auth.digest, "c": s.version.content_sha256})
        )
        payload = canonical.encode(
            {
                "salt": secrets.token_hex(16),
                "session": session,
                "party": s.index,
                "kind": "epsilon",
                "cost": s.cost,
                "view_epsilon": s.view_epsilon,
                "delta": delta,
            }
        )
        policy = cfg.policy(cfg.accountant_of(s.dataset))
        req = RequestRecord(
            session, s.signed.hash, auth.request.analyst_key, f"{auth.request.nonce}/{session}"
        )
        body = svc._audit_body(s.identity, auth.request, "OK", "overlap charge paid", auth=auth)
        body.update(session_id=session, dataset=s.dataset, dataset_version=s.version.version)
        release = NewRelease(
            answer_key, s.dataset, s.version.version, auth.digest,
            params_mod.to_json(auth.params), "epsilon", s.cost, payload, policy.name, s.rho,
        )  # fmt: skip
        committed = svc.ledger.commit(req, answer_key, release, policy, body)
        if committed.from_cache:
            raise Refusal("ALREADY_EXISTS", "this session's charge was already paid")
        s.paid, s.charged = True, committed.charged
        return self._statement(s, session, answer_key, committed.payload, committed.audit)

    def _statement(
        self, s: _Session, session: str, answer_key: str, payload: bytes, audit: Any
    ) -> answers.SignedStatement:
        svc = self.service
        return answers.sign(
            answers.Statement(
                organisation=svc.cfg.organisation,
                node_key=svc.key.public.key_id,
                request_id=session,
                request_hash=s.signed.hash,
                template_digest=s.auth.digest,
                answer_key=answer_key,
                dataset=s.dataset,
                dataset_version=s.version.version,
                payload_sha256=answers.payload_digest(payload),
                cost_kind="epsilon",
                cost=s.cost,
                charged=s.charged,
                from_cache=False,
                audit_seq=audit.seq,
                audit_hash=audit.hash,
            ),
            svc.key,
        )

    def _release(self, s: _Session, session: str) -> tuple[bytes, answers.SignedStatement]:
        if s.counter is None:
            raise Refusal("FAILED_PRECONDITION", "this node is not the session's counting node")
        if not s.paid or not s.counter.complete():
            raise Refusal(
                "FAILED_PRECONDITION", "the counter has not received every set and report"
            )
        payload = release_payload(s.query, s.counter.result(), s.auth, session)
        answer_key = canonical.sha256_hex(canonical.encode({"overlap-release": session}))
        body = self.service._audit_body(
            s.identity, s.auth.request, "OK", "overlap released", auth=s.auth
        )
        body.update(session_id=session, payload_sha256=answers.payload_digest(payload))
        audit = self.service.ledger.audit(body)
        return payload, self._statement(s, session, answer_key, payload, audit)

    def _audit(
        self, identity: str | None, session: str, outcome: str, message: str, *, stage: str = ""
    ) -> None:
        with self._lock:
            s = self._sessions.get(session)
        auth = s.auth if s else None
        body: dict[str, Any] = self.service._audit_body(
            identity, auth.request if auth else None, outcome, message, auth=auth
        )
        body.update(method="ProtocolRound", session_id=session[:300], stage=stage)
        try:
            self.service.ledger.audit(body)
        except Exception as e:  # best effort, as for Execute's refusals
            log.error("audit write failed (%s)", type(e).__name__)
