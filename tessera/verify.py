"""The analyst's check of a query result against the nodes that released it.

The coordinator forwards each contributing node's signed answer statement
(tessera.answers). Here the client checks every statement against the node keys
the analyst trusts (never keys the coordinator supplies), that each answers the
analyst's own signed request, and then, when the template permits a per-node
breakdown and so the payloads are forwarded, recomputes the combination and every
per-node figure from the signed payloads. For a combined-only template the
payloads are withheld (no one node's figures may reach the analyst): the
statements still prove who took part, for which request, at what cost and where
each answer is audited, but the sum itself cannot be recomputed.

A failure names the node (or "combined") and the part that does not hold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tessera import answers, keys, requests, results, roster, templates
from tessera.client_types import ClientError
from tessera.overlap import session as osession
from tessera.overlap.spec import overlap_query
from tessera.templates.model import Mode, Template

if TYPE_CHECKING:
    from tessera.client_types import Cell, QueryResult


_Bad = Callable[[str | None, str, str], None]


@dataclass(frozen=True)
class Problem:
    node: str | None  # the organisation, or None for the combined figures
    part: str
    message: str

    def __str__(self) -> str:
        return f"{self.node or 'combined'}: {self.part}: {self.message}"


@dataclass(frozen=True)
class Verification:
    ok: bool
    problems: tuple[Problem, ...]
    # Nodes whose signed statements verified.
    nodes: tuple[str, ...]
    # True when the figures were recomputed from signed payloads (per-node templates).
    recomputed: bool
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        if self.ok:
            how = (
                "figures recomputed from the signed answers"
                if self.recomputed
                else "statements verified; a combined-only sum cannot be recomputed"
            )
            return f"VERIFIED: {len(self.nodes)} node(s) ({', '.join(self.nodes)}); {how}"
        return "NOT VERIFIED:\n" + "\n".join(f"  - {p}" for p in self.problems)


class VerificationFailed(ClientError):
    """A result that does not verify against the nodes' signed answers."""

    def __init__(self, verification: Verification) -> None:
        super().__init__("DATA_LOSS", verification.summary())
        self.verification = verification


class TrustError(ValueError):
    """A trust file that cannot be used."""


def load_trust(path: Path) -> dict[str, str]:
    """Node keys the analyst trusts (organisation -> key id), never from the coordinator.

    Either listed directly, as obtained from the federation out of band:
    `{"nodes": {"<organisation>": "ed25519:<hex>"}}`; or vouched for by the approvers:
    `{"approvers": {"threshold": k, "keys": ["ed25519:<hex>", ...]}, "roster": FILE}`,
    where FILE (relative to the trust file) is a roster signed by at least k of those
    keys (tessera.roster)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrustError(f"cannot read trust file {path}: {type(e).__name__}") from None
    if isinstance(d, dict) and "approvers" in d:
        return _from_roster(path, d)
    nodes = d.get("nodes") if isinstance(d, dict) else None
    if not isinstance(nodes, dict) or not nodes:
        raise TrustError(f"{path}: want {{'nodes': {{organisation: key id}}}}")
    out = {}
    for org, key_id in nodes.items():
        try:
            keys.PublicKey.from_id(key_id)
        except keys.KeyError_ as e:
            raise TrustError(f"{path}: node {org!r}: {e}") from None
        out[str(org)] = key_id
    return out


def _from_roster(path: Path, d: dict[str, object]) -> dict[str, str]:
    ap = d.get("approvers")
    roster_file = d.get("roster")
    if not (isinstance(ap, dict) and isinstance(roster_file, str)):
        raise TrustError(f"{path}: want {{'approvers': {{threshold, keys}}, 'roster': FILE}}")
    threshold, approver_keys = ap.get("threshold"), ap.get("keys")
    if not (
        isinstance(threshold, int)
        and isinstance(approver_keys, list)
        and all(isinstance(k, str) for k in approver_keys)
    ):
        raise TrustError(f"{path}: approvers needs an integer threshold and a list of keys")
    try:
        body, signed = roster.load(path.parent / roster_file)
        entries = roster.verify(body, signed, approver_keys, threshold)
    except roster.RosterError as e:
        raise TrustError(f"{path}: {e}") from None
    return {org: e.node_key for org, e in entries.items()}


def verify_result(
    result: QueryResult,
    *,
    request: requests.SignedRequest,
    template_canonical: bytes,
    trust: Mapping[str, str],
) -> Verification:
    problems: list[Problem] = []

    def bad(node: str | None, part: str, message: str) -> None:
        problems.append(Problem(node, part, message))

    try:
        req = requests.verify(request)
    except (requests.RequestError, requests.RequestSignatureError) as e:
        bad(None, "request", str(e))
        return Verification(False, tuple(problems), (), False)
    digest = templates.digest_of_bytes(template_canonical)
    template = templates.parse_canonical(template_canonical)
    if digest != req.template_digest:
        bad(None, "template", "the template given is not the one the request names")
    if result.template_digest != req.template_digest:
        bad(None, "template", "the result is for another template than the request")
    if result.query_id != req.request_id:
        bad(None, "query_id", "the result is for another request id")
    if result.mode != req.mode.value:
        bad(
            None, "mode", f"the result is in mode {result.mode}, the request asked {req.mode.value}"
        )

    answered = request
    notes: list[str] = []
    if result.answered_request is not None:
        # A re-release: the same question asked earlier (perhaps by someone else). The
        # statements must answer that request, which must ask exactly this question.
        answered = requests.SignedRequest(*result.answered_request)
        try:
            first = requests.verify(answered)
        except (requests.RequestError, requests.RequestSignatureError) as e:
            bad(None, "answered_request", str(e))
            return Verification(False, tuple(problems), (), False)
        same = (
            first.template_digest == req.template_digest
            and dict(first.params) == dict(req.params)
            and sorted(set(first.audience)) == sorted(set(req.audience))
            and first.mode == req.mode
        )
        if not same:
            bad(None, "answered_request", "the earlier request asked another question")
            return Verification(False, tuple(problems), (), False)
        notes.append(f"the result of the same question asked as {first.request_id}, again")
        req_for_parts = first
    else:
        req_for_parts = req

    valid: dict[str, tuple[answers.Statement, bytes]] = {}
    seen: set[str] = set()
    sessions: set[str] = set()
    for p in result.parts:
        org = p.organisation
        if org in seen:
            bad(org, "statement", "more than one signed part for this node")
            continue
        seen.add(org)
        key_id = trust.get(org)
        if key_id is None:
            bad(org, "node", "not a node you trust (no key for it in your trust list)")
            continue
        try:
            st = answers.verify(answers.SignedStatement(p.statement, p.signature), key_id)
        except answers.StatementError as e:
            bad(org, "signature", str(e))
            continue
        if st.organisation != org:
            bad(org, "statement", f"the signed statement is {st.organisation!r}'s")
            continue
        answers_it = st.request_id == req_for_parts.request_id
        if req.mode is Mode.SECURE_AGGREGATION:
            # Each node signs for the session: "{request_id}/secagg/{attempt}", one for all.
            prefix, _, attempt = st.request_id.rpartition("/secagg/")
            answers_it = prefix == req_for_parts.request_id and attempt.isdigit()
            sessions.add(st.request_id)
        if req.mode is Mode.OVERLAP:
            # Each node signs for the session: "{request_id}/overlap/{attempt}".
            prefix, _, attempt = st.request_id.rpartition("/overlap/")
            answers_it = prefix == req_for_parts.request_id and attempt.isdigit()
            sessions.add(st.request_id)
        if st.request_hash != answered.hash or not answers_it:
            bad(org, "statement", "the signed answer is for another request (replayed)")
            continue
        if st.template_digest != req.template_digest:
            bad(org, "statement", "the signed answer is for another template")
            continue
        if org not in req.audience:
            bad(org, "node", "the request was not addressed to this node")
            continue
        if p.payload and answers.payload_digest(p.payload) != st.payload_sha256:
            bad(org, "payload", "the figures do not match the digest the node signed")
            continue
        valid[org] = (st, p.payload)

    contributed = {n.organisation for n in result.nodes if n.contributed}
    for org in sorted(contributed - set(valid)):
        if org not in seen:
            bad(org, "nodes", "reported as contributing but carries no signed statement")
    for org in sorted(set(valid) - contributed):
        bad(org, "nodes", "signed an answer but is not reported as contributing")
    if result.released and len(valid) < template.access.quorum:
        bad(
            None,
            "quorum",
            f"released from {len(valid)} verified node(s); the template requires "
            f"{template.access.quorum}",
        )
    if valid:
        costs = [st for st, _ in valid.values()]
        want = max(st.cost for st in costs)
        kind = costs[0].cost_kind
        if any(st.cost_kind != kind for st in costs) or not _close(
            result.privacy_spent.get(kind, math.nan), want
        ):
            bad(None, "privacy_spent", f"does not match the nodes' signed cost ({kind} {want:g})")

    if len(sessions) > 1:
        bad(None, "statement", "the nodes signed for different protocol sessions")
    recomputed = False
    if req.mode is Mode.OVERLAP:
        recomputed = _check_overlap(result, template, req, valid, bad)
        notes.append(
            "overlap count: the counting node's signed release was checked against the "
            "figures shown; every other node's statement shows what it was charged"
        )
    elif req.mode is Mode.SECURE_AGGREGATION:
        notes.append(
            "secure aggregation: only the sum was ever unmasked, so no one (the analyst "
            "included) can recompute it; the signed statements show which nodes took part "
            "and what each was charged"
        )
        for org, (_, payload) in sorted(valid.items()):
            if payload:
                bad(org, "payload", "a node's figures were forwarded in secure aggregation")
        if result.per_node:
            for org in sorted(result.per_node):
                bad(org, "per_node", "per-node figures in secure aggregation")
    elif template.access.per_node_breakdown:
        if valid and all(payload for _, payload in valid.values()):
            recomputed = True
            _recompute(result, template, valid, req.audience, bad)
        elif valid:
            for org, (_, payload) in sorted(valid.items()):
                if not payload:
                    bad(org, "payload", "withheld: the figures cannot be recomputed")
    else:
        notes.append(
            "combined-only template: node payloads are withheld, so the combined figures "
            "cannot be recomputed (the signed statements were checked)"
        )
        if result.per_node:
            for org in sorted(result.per_node):
                bad(org, "per_node", "per-node figures for a combined-only template")
        for org, (_, payload) in sorted(valid.items()):
            if payload:
                bad(org, "payload", "a node's figures were forwarded for a combined-only template")
    ok = not problems
    return Verification(ok, tuple(problems), tuple(sorted(valid)), recomputed, tuple(notes))


def _check_overlap(
    result: QueryResult,
    template: Template,
    req: requests.QueryRequest,
    valid: Mapping[str, tuple[answers.Statement, bytes]],
    bad: _Bad,
) -> bool:
    """Every named node signed; the counting node (fixed by the template, never by the
    coordinator) signed the release payload, and the cells shown are its cells."""
    if template.overlap is None:
        bad(None, "template", "an overlap result for a template that is not an overlap")
        return False
    try:
        query = overlap_query(template, dict(req.params), bytes(32))
    except ValueError as e:
        bad(None, "template", str(e))
        return False
    counter = req.audience[osession.counter_party(query)]
    if result.released:
        for org in req.audience:
            if org not in valid:
                bad(org, "statement", "an overlap needs every named node's signed statement")
    for org, (_, payload) in sorted(valid.items()):
        if payload and org != counter:
            bad(org, "payload", "figures forwarded from a node that is not the counting node")
    if not result.released:
        return False
    if counter not in valid or not valid[counter][1]:
        bad(counter, "payload", "the counting node's signed release is missing")
        return False
    st, payload = valid[counter]
    try:
        doc = json.loads(payload)
        expect = osession.release_cells(doc)
        same = doc["session"] == st.request_id and doc["template_digest"] == st.template_digest
    except (ValueError, KeyError, TypeError):
        bad(counter, "payload", "the counting node's release is malformed")
        return False
    if not same:
        bad(counter, "payload", "the release is for another session or template")
        return False
    _compare(None, result.cells, expect, result.dimensions, "the counting node's release", bad)
    return True


def _recompute(
    result: QueryResult,
    template: Template,
    valid: Mapping[str, tuple[answers.Statement, bytes]],
    audience: Sequence[str],
    bad: _Bad,
) -> None:
    decoded: dict[str, dict[str, results.Measure]] = {}
    for org, (st, payload) in sorted(valid.items()):
        try:
            kind, cost, measures = answers.measures_from_payload(payload)
        except answers.StatementError as e:
            bad(org, "payload", str(e))
            return
        if (kind, cost) != (st.cost_kind, st.cost):
            bad(org, "payload", "the payload's cost differs from the signed statement's")
        decoded[org] = measures
    if result.released:
        combined = results.combine([decoded[o] for o in sorted(decoded)])
        expect = results.release(template, combined)
        missing = sorted(set(audience) - set(decoded))
        whence = f"the signed answers of {', '.join(sorted(decoded))}"
        if missing:
            whence += f" (no signed answer from {', '.join(missing)})"
        _compare(None, result.cells, expect, result.dimensions, whence, bad)
    for org, cells in sorted((result.per_node or {}).items()):
        if org not in decoded:
            bad(org, "per_node", "figures shown for a node with no verified signed answer")
            continue
        expect = results.release(template, decoded[org])
        _compare(org, cells, expect, result.dimensions, "this node's signed answer", bad)


def _compare(
    node: str | None,
    shown: Sequence[Cell],
    expect: Sequence[results.Cell],
    dims: Sequence[str],
    whence: str,
    bad: _Bad,
) -> None:
    if len(shown) != len(expect):
        bad(node, "cells", f"{len(shown)} cells shown, {len(expect)} in {whence}")
        return
    for s, e in zip(shown, expect, strict=True):
        labels = tuple(s.key.get(d, "") for d in dims)
        where = "cell " + (
            ", ".join(f"{d}={v}" for d, v in zip(dims, labels, strict=True)) or "total"
        )
        if (
            labels != e.labels
            or s.suppressed != e.suppressed
            or not _close(s.estimate, e.estimate)
            or not _close(s.ci95[0], e.ci95_low)
            or not _close(s.ci95[1], e.ci95_high)
        ):
            bad(node, where, f"shown {s.estimate:g}, but {whence} give {e.estimate:g}")


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
