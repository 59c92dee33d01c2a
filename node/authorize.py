"""Deciding, from evidence the node checks itself, whether a request may run.

Order matters only for which refusal is reported first; every check runs
before any data is read or any budget is touched.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from tessera import approvals, requests, templates
from tessera.errors import Refusal
from tessera.node.config import NodeConfig
from tessera.templates.model import Mode, OverlapSpec, ParamValue, Template

# What each client role may call. An operator may also read the audit log.
ROLE_METHODS = {
    "coordinator": {"Describe", "Execute", "GetBudget", "ProtocolRound"},
    "operator": {"Describe", "Execute", "GetBudget", "ProtocolRound", "ExportAudit"},
}


@dataclass(frozen=True)
class Authorized:
    template: Template
    digest: str
    request: requests.QueryRequest
    params: dict[str, ParamValue]
    approvers: list[str]


@functools.lru_cache(maxsize=256)
def _parse_template(data: bytes) -> Template:
    """Parsing is a pure function of the bytes: templates are asked again and again."""
    return templates.parse_canonical(data)


def check_peer(cfg: NodeConfig, identity: str | None, method: str) -> str:
    role = cfg.role_of(identity)
    if role is None:
        raise Refusal(
            "PERMISSION_DENIED", "this client certificate is not allowed by the node's config"
        )
    if method not in ROLE_METHODS[role]:
        raise Refusal("PERMISSION_DENIED", f"the {role} role may not call {method}")
    return role


def authorize(
    cfg: NodeConfig,
    template_bytes: bytes,
    signed_approvals: list[approvals.Approval],
    signed: requests.SignedRequest,
    now: datetime,
    *,
    secure_aggregation: bool = False,
    overlap: bool = False,
) -> Authorized:
    """`secure_aggregation` / `overlap`: the call is a ProtocolRound session
    (tessera.node.secagg_node, tessera.node.overlap_node), the only way a request in
    that mode is answered."""
    try:
        request = requests.verify(signed)
    except requests.RequestError as e:
        raise Refusal("INVALID_ARGUMENT", str(e)) from None
    except requests.RequestSignatureError as e:
        raise Refusal("UNAUTHENTICATED", str(e)) from None

    digest = templates.digest_of_bytes(template_bytes)
    if digest != request.template_digest:
        raise Refusal(
            "UNAUTHENTICATED",
            "the analyst signed this request for a different template than the one sent",
        )
    try:
        template = _parse_template(template_bytes)
    except templates.TemplateError as e:
        raise Refusal("INVALID_ARGUMENT", f"template {e}") from None

    analyst = template.analyst(request.analyst_key)
    try:
        approvers = approvals.check(
            digest,
            signed_approvals,
            cfg.trusted_approvers,
            cfg.approvers.threshold,
            requester_key=request.analyst_key,
            requester_name=analyst.name if analyst else None,
            identities=cfg.approvers.identities(),
        )
    except approvals.ApprovalRefused as e:
        raise Refusal(e.code, e.message) from None

    if template.access.expires < now.date():
        raise Refusal("FAILED_PRECONDITION", f"the template expired on {template.access.expires}")
    if analyst is None:
        raise Refusal("PERMISSION_DENIED", "the template does not allow this analyst")
    try:
        requests.check_fresh(request, now)
    except requests.StaleRequest as e:
        raise Refusal("FAILED_PRECONDITION", str(e)) from None
    if cfg.organisation not in request.audience:
        raise Refusal("PERMISSION_DENIED", "the request is not addressed to this node")
    participants = template.access.participants
    if participants and tuple(sorted(set(request.audience))) != participants:
        raise Refusal(
            "PERMISSION_DENIED",
            "the template's approvers fixed its audience: ask exactly " + ", ".join(participants),
        )
    if request.mode is Mode.OVERLAP or overlap or _overlap_spec(template) is not None:
        _check_overlap(cfg, template, request, overlap)
    elif template.dataset not in cfg.datasets:
        raise Refusal("FAILED_PRECONDITION", f"this node does not host {template.dataset}")
    if template.purpose not in cfg.accepted_purposes:
        raise Refusal(
            "PERMISSION_DENIED", f"this node does not accept the purpose {template.purpose}"
        )
    if request.mode is Mode.PER_NODE and not template.access.per_node_breakdown:
        raise Refusal("PERMISSION_DENIED", "the template does not permit per-node answers")
    if request.mode is Mode.SECURE_AGGREGATION and not secure_aggregation:
        raise Refusal(
            "FAILED_PRECONDITION",
            "a secure-aggregation request is answered through ProtocolRound, not Execute",
        )
    if secure_aggregation and request.mode is not Mode.SECURE_AGGREGATION:
        raise Refusal(
            "INVALID_ARGUMENT", "the analyst did not sign this request for secure_aggregation"
        )
    if request.mode is Mode.SECURE_AGGREGATION and not template.access.threshold:
        raise Refusal(
            "FAILED_PRECONDITION", "the template declares no secure-aggregation threshold"
        )
    if (
        request.mode is Mode.COMBINED
        and template.access.threshold
        and not template.access.per_node_breakdown
    ):
        raise Refusal(
            "FAILED_PRECONDITION",
            "this combined-only template is answered only in secure_aggregation mode",
        )
    try:
        params = templates.bind(template, request.params)
    except templates.ParamError as e:
        raise Refusal("INVALID_ARGUMENT", str(e)) from None
    return Authorized(template, digest, request, params, approvers)


def _overlap_spec(template: Template) -> OverlapSpec | None:
    return template.overlap


def overlap_party(cfg: NodeConfig, template: Template, request: requests.QueryRequest) -> int:
    """This node's party index: its place in the audience, which the analyst signed in
    the template's dataset order."""
    return request.audience.index(cfg.organisation)


def _check_overlap(
    cfg: NodeConfig, template: Template, request: requests.QueryRequest, overlap: bool
) -> None:
    spec = _overlap_spec(template)
    if request.mode is not Mode.OVERLAP:
        if spec is not None:
            raise Refusal(
                "FAILED_PRECONDITION", "an overlap template is answered only in overlap mode"
            )
        raise Refusal("INVALID_ARGUMENT", "the analyst did not sign this request for overlap")
    if not overlap:
        raise Refusal(
            "FAILED_PRECONDITION",
            "an overlap request is answered through ProtocolRound, not Execute",
        )
    if spec is None:
        raise Refusal("FAILED_PRECONDITION", "the template is not an overlap template")
    names = [d.dataset for d in spec.datasets]
    audience = request.audience
    if len(audience) != len(names) or len(set(audience)) != len(audience):
        raise Refusal(
            "INVALID_ARGUMENT",
            f"an overlap request names one distinct organisation per dataset ({len(names)}), "
            "in the template's dataset order",
        )
    index = overlap_party(cfg, template, request)
    if names[index] not in cfg.datasets:
        raise Refusal(
            "FAILED_PRECONDITION",
            f"the request places this node as party {index + 1} ({names[index]}), "
            "which it does not host",
        )
