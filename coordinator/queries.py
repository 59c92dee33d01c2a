"""Running an analyst's signed request across the nodes, and the query history.

The coordinator checks what it can before calling anyone (role, key, signature,
template published and unexpired, analyst allowed, freshness, mode, parameters),
but each node still decides for itself from the evidence it is sent. A request id
already run returns the stored result: nothing is fanned out, nothing spent twice.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

from tessera import answers, canonical, requests, templates
from tessera.clock import isoformat
from tessera.coordinator import combine, convert, overlap_run, secagg_run
from tessera.coordinator.config import Person
from tessera.coordinator.fanout import Target
from tessera.coordinator.model import (
    NodeAnswer,
    NodeProgress,
    NodeReport,
    Outcome,
    QueryDone,
    QueryEvent,
    QueryRecord,
    QueryResult,
    SignedPart,
    TemplateRecord,
)
from tessera.coordinator.service import PUBLISHED, CoordinatorService
from tessera.coordinator.store import Conflict
from tessera.errors import Refusal
from tessera.templates.model import Mode, Template

RUNNING, RELEASED, WITHHELD = "running", "released", "withheld"


@dataclass(frozen=True)
class _Run:
    """A query that passed every check and is about to be fanned out."""

    person: Person
    identity: str | None
    signed: requests.SignedRequest
    request: requests.QueryRequest
    record: TemplateRecord
    template: Template
    targets: tuple[Target, ...]
    # Audience members the coordinator cannot route to, reported as failed nodes.
    unrouted: tuple[Outcome[NodeAnswer], ...]


class Queries:
    def __init__(self, service: CoordinatorService) -> None:
        self.s = service

    def run_query(
        self, identity: str | None, signed: requests.SignedRequest
    ) -> Generator[QueryEvent, None, None]:
        """Check the request (raising a Refusal), then return the stream of events: one
        per node as it finishes, then the result."""
        method = "RunQuery"
        body = _parsed(signed)
        context = {} if body is None else _request_context(body)
        with self.s.refusals_audited(identity, method, **context):
            person = self.s.caller(identity, method)
            request = self._verified(person, signed, body)
            existing = self.s.store.query(request.request_id)
            if existing is not None:
                self._same_request(existing, signed)
                if existing.result is not None:
                    return _replay(existing.result)
                # Left running by a restart: run it again. Nodes answer a retried
                # request id from their ledgers without spending.
            run = self._prepare(person, identity, signed, request)
            if existing is None:
                self._begin(run)
        return self._stream(run)

    def _verified(
        self,
        person: Person,
        signed: requests.SignedRequest,
        body: requests.QueryRequest | None,
    ) -> requests.QueryRequest:
        """`body` is `_parsed(signed)`, parsed once for the audit context and reused."""
        try:
            request = requests.parse(signed.body) if body is None else body
        except requests.RequestError as e:
            raise Refusal("INVALID_ARGUMENT", str(e)) from None
        if request.analyst_key != person.key:
            raise Refusal("PERMISSION_DENIED", "the request is not signed with your registered key")
        try:
            return requests.verify(signed, request)
        except requests.RequestSignatureError as e:
            raise Refusal("UNAUTHENTICATED", str(e)) from None

    def _same_request(self, existing: QueryRecord, signed: requests.SignedRequest) -> None:
        if (existing.request_body, existing.request_signature) != (signed.body, signed.signature):
            raise Refusal("ALREADY_EXISTS", "this request id was already used for another request")

    def _prepare(
        self,
        person: Person,
        identity: str | None,
        signed: requests.SignedRequest,
        request: requests.QueryRequest,
    ) -> _Run:
        rec = self.s.store.template(request.template_digest)
        if rec is None:
            raise Refusal("FAILED_PRECONDITION", "the coordinator has no such template")
        if rec.state != PUBLISHED:
            raise Refusal(
                "FAILED_PRECONDITION",
                f"the template has {len(rec.approvals)} of the "
                f"{rec.approvals_required} approvals needed to publish it",
            )
        t = _parse_template(rec.canonical)
        now = self.s.clock.now()
        if t.access.expires < now.date():
            raise Refusal("FAILED_PRECONDITION", f"the template expired on {t.access.expires}")
        if t.analyst(request.analyst_key) is None:
            raise Refusal("PERMISSION_DENIED", "the template does not allow this analyst")
        try:
            requests.check_fresh(request, now)
        except requests.StaleRequest as e:
            raise Refusal("FAILED_PRECONDITION", str(e)) from None
        if request.mode is Mode.PER_NODE and not t.access.per_node_breakdown:
            raise Refusal("PERMISSION_DENIED", "the template does not permit per-node answers")
        participants = t.access.participants
        if participants and tuple(sorted(set(request.audience))) != participants:
            raise Refusal(
                "PERMISSION_DENIED",
                "the template's approvers fixed its audience: ask exactly "
                + ", ".join(participants),
            )
        if request.mode is Mode.SECURE_AGGREGATION and not t.access.threshold:
            raise Refusal(
                "FAILED_PRECONDITION", "the template declares no secure-aggregation threshold"
            )
        n_asked = len(set(request.audience))
        if request.mode is Mode.SECURE_AGGREGATION and not (
            n_asked // 2 < t.access.threshold <= n_asked and n_asked >= 3
        ):
            raise Refusal(
                "FAILED_PRECONDITION",
                f"secure aggregation with threshold {t.access.threshold} needs at least 3 "
                f"nodes and more than half of those asked to reach it; {n_asked} asked",
            )
        if request.mode is Mode.COMBINED and t.access.threshold and not t.access.per_node_breakdown:
            raise Refusal(
                "FAILED_PRECONDITION",
                "this combined-only template is answered only in secure_aggregation mode",
            )
        try:
            templates.bind(t, request.params)
        except templates.ParamError as e:
            raise Refusal("INVALID_ARGUMENT", str(e)) from None
        if request.mode is Mode.OVERLAP or t.overlap is not None:
            targets, unrouted = self._route_overlap(t, request)
            return _Run(person, identity, signed, request, rec, t, targets, unrouted)
        targets, unrouted = self._route(t.dataset, request.audience)
        return _Run(person, identity, signed, request, rec, t, targets, unrouted)

    def _route_overlap(
        self, t: Template, request: requests.QueryRequest
    ) -> tuple[tuple[Target, ...], tuple[Outcome[NodeAnswer], ...]]:
        """Party i is the i-th organisation of the signed audience, hosting dataset i."""
        if t.overlap is None or request.mode is not Mode.OVERLAP:
            raise Refusal(
                "FAILED_PRECONDITION",
                "an overlap template is answered only in overlap mode"
                if t.overlap is not None
                else "the template is not an overlap template",
            )
        names = [d.dataset for d in t.overlap.datasets]
        if len(request.audience) != len(names) or len(set(request.audience)) != len(names):
            raise Refusal(
                "INVALID_ARGUMENT",
                f"an overlap request names one distinct organisation per dataset "
                f"({', '.join(names)}), in that order",
            )
        targets: list[Target] = []
        unrouted: list[Outcome[NodeAnswer]] = []
        for org, dataset in zip(request.audience, names, strict=True):
            routed, missing = self._route(dataset, [org])
            targets += routed
            unrouted += missing
        return tuple(targets), tuple(unrouted)

    def _route(
        self, dataset: str, audience: Sequence[str]
    ) -> tuple[tuple[Target, ...], tuple[Outcome[NodeAnswer], ...]]:
        """The audience nodes hosting the dataset; the rest named with the reason."""
        reg = self.s.registry
        routed, unrouted = [], []
        for org in sorted(set(audience)):
            if not reg.knows(org):
                unrouted.append(
                    Outcome[NodeAnswer](
                        org,
                        "NOT_FOUND",
                        "no node of this name is registered with the coordinator",
                        0.0,
                    )
                )
            elif not reg.hosts(org, dataset):
                unrouted.append(
                    Outcome[NodeAnswer](
                        org, "FAILED_PRECONDITION", f"the node does not host {dataset}", 0.0
                    )
                )
            else:
                routed.append(org)
        return tuple(reg.targets(routed)), tuple(unrouted)

    def _begin(self, run: _Run) -> None:
        r = run.request
        q = QueryRecord(
            r.request_id,
            run.person.name,
            r.analyst_key,
            isoformat(self.s.clock.now()),
            RUNNING,
            run.signed.body,
            run.signed.signature,
            None,
        )
        asked = [t.organisation for t in run.targets]
        body = self.s.audit_body(
            run.identity,
            "RunQuery",
            "OK",
            f"routed to {', '.join(asked) or 'no node'}",
            **_request_context(r),
        )
        try:
            self.s.store.begin_query(q, body)
        except Conflict:  # the same request arrived twice at once
            existing = self.s.store.query(r.request_id)
            if existing is not None:
                self._same_request(existing, run.signed)

    def _stream(self, run: _Run) -> Generator[QueryEvent, None, None]:
        if run.request.mode is Mode.SECURE_AGGREGATION:
            yield from self._stream_secagg(run)
            return
        if run.request.mode is Mode.OVERLAP:
            yield from self._stream_protocol(run, overlap_run.run_for_query)
            return
        total = len(run.targets) + len(run.unrouted)
        outcomes: list[Outcome[NodeAnswer]] = list(run.unrouted)
        pending = self.s.fanout.execute(
            run.targets,
            run.record.canonical,
            run.record.approvals,
            run.signed,
            self.s.cfg.deadline_seconds,
        )
        finished = False
        try:
            for o in run.unrouted:
                yield NodeProgress(_report(o), total)
            for o in pending:
                self.s.registry.record(o)
                outcomes.append(o)
                yield NodeProgress(_report(o), total)
            finished = True
            yield QueryDone(self._finish(run, outcomes), total)
        finally:
            if not finished:
                # The caller went away: still collect every node and store the result.
                for o in pending:
                    self.s.registry.record(o)
                    outcomes.append(o)
                self._finish(run, outcomes)

    def _stream_secagg(self, run: _Run) -> Generator[QueryEvent, None, None]:
        """Secure aggregation (tessera.coordinator.secagg_run): one session, the sum only."""
        yield from self._stream_protocol(run, secagg_run.run_for_query)

    def _stream_protocol(
        self, run: _Run, run_for_query: Callable[..., QueryResult]
    ) -> Generator[QueryEvent, None, None]:
        """A ProtocolRound session (secure aggregation, overlap): one result, stored."""
        r = run.request
        result = run_for_query(
            self.s.fanout,
            run.targets,
            [o.organisation for o in run.unrouted],
            signed_template=convert.signed_template(run.record.canonical, run.record.approvals),
            signed=run.signed,
            request=r,
            template=run.template,
            digest=run.record.digest,
            deadline_seconds=self.s.cfg.deadline_seconds,
        )
        total = len(result.nodes)
        for n in result.nodes:
            yield NodeProgress(n, total)
        message = (
            f"released from {', '.join(n.organisation for n in result.nodes if n.contributed)}"
            if result.released
            else result.withheld_reason
        )
        body = self.s.audit_body(run.identity, "RunQuery", "OK", message, **_request_context(r))
        body["cost"] = {result.privacy_spent.kind: result.privacy_spent.value}
        body["nodes"] = {n.organisation: n.status for n in result.nodes}
        body["receipts"] = _receipts(result.parts)
        state = RELEASED if result.released else WITHHELD
        self.s.store.finish_query(r.request_id, state, result, body)
        yield QueryDone(result, total)

    def _finish(self, run: _Run, outcomes: list[Outcome[NodeAnswer]]) -> QueryResult:
        r = run.request
        result = combine.combine(run.template, run.record.digest, r.request_id, r.mode, outcomes)
        result = dataclasses.replace(result, parts=_signed_parts(run.template, result, outcomes))
        answered = [n.organisation for n in result.nodes if n.contributed]
        message = (
            f"released from {', '.join(answered)}" if result.released else result.withheld_reason
        )
        if result.released and not run.template.access.per_node_breakdown:
            earlier = self._earlier_release(run, result, outcomes)
            if earlier is not None:
                message = f"the earlier release of query {earlier.query_id} again"
                result = dataclasses.replace(earlier, query_id=r.request_id)
                # The nodes' statements answer the earlier request: forward it too, so
                # the analyst can check them (tessera.verify).
                first = self.s.store.query(earlier.query_id)
                if result.answered_request is None and first is not None:
                    result = dataclasses.replace(
                        result, answered_request=(first.request_body, first.request_signature)
                    )
        body = self.s.audit_body(run.identity, "RunQuery", "OK", message, **_request_context(r))
        body["cost"] = {result.privacy_spent.kind: result.privacy_spent.value}
        body["nodes"] = {n.organisation: n.status for n in result.nodes}
        # Receipts: where each node audited the answer it released (docs/security.md).
        body["receipts"] = _receipts(result.parts)
        state = RELEASED if result.released else WITHHELD
        self.s.store.finish_query(r.request_id, state, result, body)
        return result

    def _earlier_release(
        self, run: _Run, result: QueryResult, outcomes: list[Outcome[NodeAnswer]]
    ) -> QueryResult | None:
        """No differencing across contributor sets. Each node's noise is keyed by the
        audience, so the same combined-only question (digest, parameters, audience) asked
        again draws the same noisy answer from each node whose data is unchanged. Had a
        node dropped out of one release and not another, their difference would be that
        node's own figure. So a question is released with one set of contributors: a
        later fan-out that shares any node's noisy answer with the stored release but
        has other contributors gets the stored release again. With the same
        contributors (some of whose data changed) the new combination is released."""
        r = run.request
        question = canonical.sha256_hex(
            canonical.encode(
                {
                    "d": run.record.digest,
                    "p": dict(r.params),
                    "a": sorted(set(r.audience)),
                    "m": r.mode.value,
                }
            )
        )
        contributed = {n.organisation for n in result.nodes if n.contributed}
        now = {
            o.organisation: _fingerprint(o.value)
            for o in outcomes
            if o.value is not None and o.organisation in contributed
        }
        stored = self.s.store.combined_release(question)
        if stored is not None:
            before, query_id = stored
            shared = any(before.get(org) == fp for org, fp in now.items())
            earlier = self.s.store.query(query_id)
            if (
                set(before) != set(now)
                and shared
                and earlier is not None
                and earlier.result is not None
                and query_id != r.request_id
            ):
                return earlier.result
        self.s.store.put_combined_release(question, now, r.request_id)
        return None

    # -- history ---------------------------------------------------------------------

    def get_query(self, identity: str | None, query_id: str) -> QueryRecord:
        with self.s.refusals_audited(identity, "GetQuery"):
            person = self.s.caller(identity, "GetQuery")
            q = self.s.store.query(query_id)
            # Someone else's query is as invisible as one that does not exist.
            if q is None or q.analyst_key != person.key:
                raise Refusal("NOT_FOUND", "no query with that id")
        return q

    def list_queries(self, identity: str | None, limit: int) -> list[QueryRecord]:
        with self.s.refusals_audited(identity, "ListQueries"):
            person = self.s.caller(identity, "ListQueries")
        return self.s.store.queries(person.key, limit or 100)


@functools.lru_cache(maxsize=256)
def _parse_template(data: bytes) -> Template:
    """Parsing is a pure function of the bytes, and a published template is asked again
    and again (the node caches it the same way)."""
    return templates.parse_canonical(data)


def _parsed(signed: requests.SignedRequest) -> requests.QueryRequest | None:
    try:
        return requests.parse(signed.body)
    except requests.RequestError:
        return None


def _request_context(r: requests.QueryRequest) -> dict[str, object]:
    return {
        "template_digest": r.template_digest,
        "params": dict(r.params),
        "mode": r.mode.value,
        "request_id": r.request_id,
    }


def _signed_parts(
    template: Template, result: QueryResult, outcomes: Sequence[Outcome[NodeAnswer]]
) -> tuple[SignedPart, ...]:
    """The signed statement of each node that contributed, forwarded unchanged. A node's
    payload (its own figures) goes with it only when the template permits a per-node
    breakdown: a combined-only answer must not reveal any one node's figures."""
    contributed = {n.organisation for n in result.nodes if n.contributed}
    with_payload = template.access.per_node_breakdown
    return tuple(
        SignedPart(
            o.organisation,
            o.value.statement,
            o.value.statement_signature,
            o.value.payload if with_payload else b"",
        )
        for o in sorted(outcomes, key=lambda o: o.organisation)
        if o.value is not None and o.organisation in contributed
    )


def _fingerprint(a: NodeAnswer) -> str:
    """Names a node's noisy answer: equal for the same stored answer. Two fresh draws
    that happen to coincide count as the same (the cautious side)."""
    return canonical.sha256_hex(
        canonical.encode({name: list(m.values) for name, m in sorted(a.measures.items())})
    )


def _receipts(parts: Sequence[SignedPart]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for p in parts:
        try:
            st = answers.parse(p.statement)
        except answers.StatementError:
            continue
        out[p.organisation] = {
            "seq": st.audit_seq,
            "hash": st.audit_hash,
            "payload_sha256": st.payload_sha256,
            "request_hash": st.request_hash,
        }
    return out


def _report(o: Outcome[NodeAnswer]) -> NodeReport:
    return NodeReport(o.organisation, o.status, o.message, o.ok, o.latency_ms)


def _replay(result: QueryResult) -> Generator[QueryEvent, None, None]:
    total = len(result.nodes)
    for n in result.nodes:
        yield NodeProgress(n, total)
    yield QueryDone(result, total)
