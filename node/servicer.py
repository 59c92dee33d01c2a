"""NodeService over gRPC: translation between the wire and the domain, nothing more."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

from tessera import approvals, requests, startup
from tessera.node.overlap_node import OverlapNode
from tessera.node.secagg_node import SecAggNode
from tessera.node.service import Answer, DatasetStatus, NodeService
from tessera.overlap import session as osession
from tessera.serving import guarded
from tessera.tls import peer_identity
from tessera.wire.v1 import common_pb2, node_pb2, node_pb2_grpc

log = logging.getLogger("tessera.node")
VERSION = "0.1.0"


def _loss(kind: str, value: float) -> common_pb2.PrivacyLoss:
    return common_pb2.PrivacyLoss(**{kind: value})


def _dataset_infos(datasets: list[DatasetStatus]) -> list[common_pb2.DatasetInfo]:
    """One entry per dataset, with its accountant's spend in ρ. The content hash stays
    on the node: a version is named by its opaque `version_id`."""
    return [
        common_pb2.DatasetInfo(
            name=d.name,
            schema_version=d.schema_version,
            version=d.version,
            version_id=d.version_id,
            budget_total=_loss(kind, total),
            budget_spent=_loss(kind, d.budget_spent[kind]),
            accountant=d.accountant,
            epsilon_at_delta=d.epsilon_at_delta,
            delta=d.delta,
            period=d.period or "",
            period_rho_total=d.period_rho_total or 0.0,
            period_rho_spent=d.period_rho_spent,
            lifetime_rho_spent=d.lifetime_rho_spent,
        )
        for d in datasets
        for kind, total in d.budget_total.items()
    ]


# The figures of the last few stored answers as wire messages (a cached answer is sent
# again and again; building its cells field by field is most of its serialising cost).
_FIGURES_CACHE_SIZE = 256
_figures: OrderedDict[tuple[str, bytes], node_pb2.Answer] = OrderedDict()
_figures_lock = threading.Lock()


def answer_to_proto(a: Answer) -> node_pb2.ExecuteReply:
    # Dimensions, measures and cells follow from the template (fixed by its digest) and
    # the stored payload; the rest is per request.
    key = (a.digest, a.payload)
    with _figures_lock:
        figures = _figures.get(key)
        if figures is not None:
            _figures.move_to_end(key)
    if figures is None:
        figures = _figures_of(a)
        if a.payload:
            with _figures_lock:
                _figures[key] = figures
                while len(_figures) > _FIGURES_CACHE_SIZE:
                    _figures.popitem(last=False)
    t = a.template
    answer = node_pb2.Answer()
    answer.CopyFrom(figures)
    answer.template_digest = a.digest
    answer.dataset = t.dataset
    answer.dataset_version = a.dataset_version
    answer.statistic = t.statistic.kind.value
    answer.cost.CopyFrom(_loss(a.cost.kind, a.cost.value))
    answer.notes.extend(a.notes)
    answer.charged.CopyFrom(_loss(a.cost.kind, a.charged))
    answer.from_cache = a.from_cache
    return node_pb2.ExecuteReply(
        organisation=a.organisation,
        answer=answer,
        audit_seq=a.audit_seq,
        audit_hash=a.audit_hash,
        statement=a.statement,
        statement_signature=a.statement_signature,
        payload=a.payload,
    )


def _figures_of(a: Answer) -> node_pb2.Answer:
    t = a.template
    dims = [common_pb2.Dimension(name=d.name, labels=list(d.labels)) for d in t.group_by]
    measures = [
        common_pb2.NoisyMeasure(
            name=m.name,
            values=list(m.values),
            variance=m.variance,
            ci95_half_width=m.ci95_half_width,
            ci975_half_width=m.ci975_half_width,
            noise=[
                common_pb2.NoiseComponent(mechanism=p.mechanism, scale=p.scale) for p in m.noise
            ],
        )
        for m in a.measures.values()
    ]
    cells = [
        common_pb2.ReleasedCell(
            labels=list(c.labels),
            estimate=c.estimate,
            ci95_low=c.ci95_low,
            ci95_high=c.ci95_high,
            suppressed=c.suppressed,
            coverage=c.coverage,
        )
        for c in a.cells
    ]
    return node_pb2.Answer(dimensions=dims, measures=measures, cells=cells)


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, service: NodeService) -> None:
        self.service = service
        self.secagg = SecAggNode(service)
        self.overlap = OverlapNode(service, self.secagg.roster)

    def Describe(self, request: Any, context: Any) -> node_pb2.DescribeReply:
        cfg = self.service.cfg
        if request.identity_only:
            # No budgets (each an OpenDP conversion to ε) nor certificate checks: the
            # coordinator asks this at every secure-aggregation session.
            guarded(context, lambda: self.service.check_peer(peer_identity(context), "Describe"))
            return node_pb2.DescribeReply(
                organisation=cfg.organisation,
                node_key=self.service.key.public.key_id,
                software_version=VERSION,
            )
        datasets = guarded(
            context, lambda: self.service.datasets(peer_identity(context), "Describe")
        )
        return node_pb2.DescribeReply(
            organisation=cfg.organisation,
            datasets=_dataset_infos(datasets),
            accepted_purposes=list(cfg.accepted_purposes),
            node_key=self.service.key.public.key_id,
            software_version=VERSION,
            warnings=startup.expiry_warnings(
                {"tls.cert": cfg.tls.cert, "tls.ca": cfg.tls.ca}, paths=False
            ),
        )

    def GetBudget(self, request: Any, context: Any) -> node_pb2.GetBudgetReply:
        datasets = guarded(
            context, lambda: self.service.datasets(peer_identity(context), "GetBudget")
        )
        return node_pb2.GetBudgetReply(
            organisation=self.service.cfg.organisation,
            datasets=_dataset_infos(datasets),
        )

    def Execute(self, request: Any, context: Any) -> node_pb2.ExecuteReply:
        signed = requests.SignedRequest(request.request.canonical, request.request.signature)
        approval_list = [
            approvals.Approval(a.approver_key, a.signature) for a in request.template.approvals
        ]
        answer = guarded(
            context,
            lambda: self.service.execute(
                peer_identity(context), request.template.canonical, approval_list, signed
            ),
        )
        return answer_to_proto(answer)

    def ProtocolRound(self, request: Any, context: Any) -> node_pb2.ProtocolRoundReply:
        """One message of a secure-aggregation session (tessera.node.secagg_node) or,
        for a session id `{request_id}/overlap/{attempt}`, of an overlap count
        (tessera.node.overlap_node)."""
        signed = None
        if request.HasField("request"):
            signed = requests.SignedRequest(request.request.canonical, request.request.signature)
        approval_list = [
            approvals.Approval(a.approver_key, a.signature) for a in request.template.approvals
        ]
        reply = guarded(
            context,
            lambda: (
                self.overlap if osession.is_session(request.session_id) else self.secagg
            ).round(
                peer_identity(context),
                request.session_id,
                request.payload,
                request.template.canonical,
                approval_list,
                signed,
            ),
        )
        return node_pb2.ProtocolRoundReply(
            payload=reply.payload,
            statement=reply.statement,
            statement_signature=reply.statement_signature,
            noise_scales=list(reply.noise_scales),
        )

    def ExportAudit(self, request: Any, context: Any) -> node_pb2.ExportAuditReply:
        guarded(context, lambda: self.service.check_peer(peer_identity(context), "ExportAudit"))
        limit = min(max(request.limit, 1), 1000)
        entries = guarded(
            context, lambda: self.service.ledger.audit_log.export(max(request.from_seq, 1), limit)
        )
        # Entries carry the parameters callers sent (up to a request's 64 KiB), so a page
        # of `limit` of them can outgrow the message limit: stop at half of it, and the
        # operator reads on from the last sequence number returned.
        room = self.service.cfg.max_message_bytes // 2
        page: list[node_pb2.AuditEntry] = []
        for e in entries:
            item = node_pb2.AuditEntry(
                seq=e.seq, body=e.body, prev_hash=e.prev_hash, hash=e.hash, signature=e.signature
            )
            room -= item.ByteSize() + 8
            if page and room < 0:
                break
            page.append(item)
        return node_pb2.ExportAuditReply(entries=page, node_key=self.service.key.public.key_id)
