"""The coordinator's domain logic: who may call what, the template registry and node
status. Queries live in coordinator.queries.

Every change (a template submitted, an approval added, a query routed) and every
refusal is written to the coordinator's audit log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tessera import approvals, templates
from tessera.clock import Clock, isoformat
from tessera.coordinator.config import CoordinatorConfig, Person
from tessera.coordinator.fanout import FanOut
from tessera.coordinator.model import NodeBudgets, NodeStatus, TemplateRecord
from tessera.coordinator.registry import Registry
from tessera.coordinator.store import Conflict, Store
from tessera.errors import Refusal

log = logging.getLogger("tessera.coordinator")

PENDING, PUBLISHED = "pending", "published"
ANALYST, APPROVER = "analyst", "approver"
# What each role may call. Analysts cannot approve; approvers cannot run queries.
_EITHER = {"SubmitTemplate", "ListTemplates", "GetTemplate", "ListNodes", "GetBudgets"}
ROLE_METHODS = {
    ANALYST: _EITHER | {"RunQuery", "GetQuery", "ListQueries"},
    APPROVER: _EITHER | {"AddApproval"},
}
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class CoordinatorService:
    """Templates, nodes, and the identity checks and audit that the query methods
    (coordinator.queries) share."""

    def __init__(
        self,
        cfg: CoordinatorConfig,
        store: Store,
        registry: Registry,
        fanout: FanOut,
        clock: Clock,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.registry = registry
        self.fanout = fanout
        self.clock = clock

    def caller(self, identity: str | None, method: str) -> Person:
        if identity is None:
            raise Refusal("UNAUTHENTICATED", "no client certificate identity")
        person = self.cfg.person(identity)
        if person is None:
            raise Refusal(
                "PERMISSION_DENIED", "this client certificate is not allowed by the coordinator"
            )
        if method not in ROLE_METHODS[person.role]:
            raise Refusal("PERMISSION_DENIED", f"the {person.role} role may not call {method}")
        return person

    @contextmanager
    def refusals_audited(self, identity: str | None, method: str, **context: Any) -> Iterator[None]:
        try:
            yield
        except Refusal as r:
            self.audit_best_effort(self.audit_body(identity, method, r.code, r.message, **context))
            raise
        except Exception as e:
            # A fault of ours: audited by its type only (its text may carry values), then
            # re-raised for the servicer to log and answer INTERNAL.
            message = f"internal error ({type(e).__name__})"
            body = self.audit_body(identity, method, "INTERNAL", message, **context)
            self.audit_best_effort(body)
            raise

    def audit_body(
        self, identity: str | None, method: str, outcome: str, message: str, **context: Any
    ) -> dict[str, Any]:
        person = self.cfg.person(identity)
        body: dict[str, Any] = {
            "actor": {
                "peer": identity,
                "name": person.name if person else None,
                "role": person.role if person else None,
            },
            "method": method,
            "template_digest": None,
            "params": None,
            "mode": None,
            "cost": None,
            "outcome": outcome,
            "message": message,
        }
        body.update(context)
        return body

    def audit_best_effort(self, body: dict[str, Any]) -> None:
        """A refusal goes out even when the audit cannot be written."""
        try:
            self.store.audit(body)
        except Exception as e:  # (sqlite3.Error, OSError, AuditError, an unencodable body)
            log.error("could not audit a refusal (%s)", type(e).__name__)

    def template_state(self, digest: str, approval_list: list[approvals.Approval]) -> str:
        try:
            approvals.check(
                digest,
                approval_list,
                self.cfg.trusted_approvers,
                self.cfg.approvers.threshold,
                identities=self.cfg.approvers.identities(),
            )
        except approvals.ApprovalRefused:
            return PENDING
        return PUBLISHED

    def find_template(self, digest_or_id: str) -> TemplateRecord:
        if _DIGEST.match(digest_or_id):
            rec = self.store.template(digest_or_id)
        else:
            rec = self.store.newest_template(digest_or_id)
        if rec is None:
            raise Refusal("NOT_FOUND", "no template with that digest or id")
        return rec

    def reconcile(self) -> None:
        """Recompute every template's state under the current trust config (it may
        have changed since the coordinator last ran)."""
        for t in self.store.templates():
            state = self.template_state(t.digest, list(t.approvals))
            if state != t.state:
                self.store.set_state(t.digest, state)

    # -- templates -------------------------------------------------------------------

    def submit_template(self, identity: str | None, canonical: bytes) -> TemplateRecord:
        method = "SubmitTemplate"
        with self.refusals_audited(identity, method):
            person = self.caller(identity, method)
            try:
                t = templates.parse_canonical(canonical)
            except templates.TemplateError as e:
                raise Refusal("INVALID_ARGUMENT", f"{e.field}: {e.message}") from None
            digest = templates.digest_of_bytes(canonical)
            if t.access.expires < self.clock.now().date():
                raise Refusal(
                    "FAILED_PRECONDITION",
                    f"access.expires: the template expired on {t.access.expires.isoformat()}",
                )
            rec = TemplateRecord(
                digest=digest,
                id=t.id,
                version=t.version,
                title=t.title,
                canonical=canonical,
                approvals=(),
                state=PENDING,
                approvals_required=self.cfg.approvers.threshold,
                submitted_by=person.name,
                submitted_at=isoformat(self.clock.now()),
            )
            body = self.audit_body(
                identity, method, "OK", f"submitted {t.id} v{t.version}", template_digest=digest
            )
            try:
                self.store.add_template(rec, body)
            except Conflict:
                raise Refusal("ALREADY_EXISTS", self._clash(digest, t.id, t.version)) from None
        return rec

    def _clash(self, digest: str, template_id: str, version: int) -> str:
        if self.store.template(digest) is not None:
            return "a template with this digest is already registered"
        return (
            f"template {template_id} version {version} is already registered with "
            "another digest; give the new one a higher version"
        )

    def list_templates(self, identity: str | None, state: str) -> list[TemplateRecord]:
        with self.refusals_audited(identity, "ListTemplates"):
            self.caller(identity, "ListTemplates")
            if state not in ("", PENDING, PUBLISHED):
                raise Refusal("INVALID_ARGUMENT", "state must be '', 'pending' or 'published'")
        return self.store.templates(state)

    def get_template(self, identity: str | None, digest_or_id: str) -> TemplateRecord:
        with self.refusals_audited(identity, "GetTemplate"):
            self.caller(identity, "GetTemplate")
            return self.find_template(digest_or_id)

    def add_approval(
        self, identity: str | None, digest: str, approval: approvals.Approval
    ) -> TemplateRecord:
        method = "AddApproval"
        with self.refusals_audited(identity, method, template_digest=digest or None):
            person = self.caller(identity, method)
            rec = self.store.template(digest) if _DIGEST.match(digest) else None
            if rec is None:
                raise Refusal("NOT_FOUND", "no template with that digest")
            if approval.approver_key != person.key:
                raise Refusal(
                    "PERMISSION_DENIED", "the approval is not signed with your registered key"
                )
            try:
                approvals.check(digest, [approval], {person.key: person.name}, 1)
            except approvals.ApprovalRefused as e:
                raise Refusal("UNAUTHENTICATED", e.message) from None
            updated = approvals.add(list(rec.approvals), approval)
            state = self.template_state(digest, updated)
            body = self.audit_body(
                identity,
                method,
                "OK",
                f"approval added; template is {state}",
                template_digest=digest,
            )
            self.store.add_approval(digest, approval, state, body)
        out = self.store.template(digest)
        assert out is not None
        return out

    # -- nodes -----------------------------------------------------------------------

    def list_nodes(self, identity: str | None) -> list[NodeStatus]:
        with self.refusals_audited(identity, "ListNodes"):
            self.caller(identity, "ListNodes")
        self.registry.refresh()
        return self.registry.statuses()

    def budgets(self, identity: str | None) -> list[NodeBudgets]:
        with self.refusals_audited(identity, "GetBudgets"):
            self.caller(identity, "GetBudgets")
        out = []
        for o in self.fanout.budgets(self.registry.targets(), self.cfg.deadline_seconds):
            self.registry.record(o)
            datasets = o.value.datasets if o.ok and o.value is not None else ()
            out.append(NodeBudgets(o.organisation, o.status, o.message, datasets))
        return sorted(out, key=lambda b: b.organisation)
