"""CoordinatorService over gRPC: translation between the wire and the domain, nothing more."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tessera.coordinator import convert
from tessera.coordinator.queries import Queries
from tessera.coordinator.service import CoordinatorService
from tessera.serving import guarded
from tessera.tls import peer_identity
from tessera.wire.v1 import coordinator_pb2, coordinator_pb2_grpc

pb = coordinator_pb2


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(self, service: CoordinatorService, queries: Queries) -> None:
        self.service = service
        self.queries = queries

    # -- templates -------------------------------------------------------------------

    def SubmitTemplate(self, request: Any, context: Any) -> pb.TemplateRecord:
        rec = guarded(
            context, lambda: self.service.submit_template(peer_identity(context), request.canonical)
        )
        return convert.template_to_proto(rec)

    def ListTemplates(self, request: Any, context: Any) -> pb.ListTemplatesReply:
        recs = guarded(
            context, lambda: self.service.list_templates(peer_identity(context), request.state)
        )
        return pb.ListTemplatesReply(templates=[convert.template_to_proto(r) for r in recs])

    def GetTemplate(self, request: Any, context: Any) -> pb.TemplateRecord:
        rec = guarded(
            context, lambda: self.service.get_template(peer_identity(context), request.digest_or_id)
        )
        return convert.template_to_proto(rec)

    def AddApproval(self, request: Any, context: Any) -> pb.TemplateRecord:
        approval = convert.approval_from_proto(request.approval)
        rec = guarded(
            context,
            lambda: self.service.add_approval(peer_identity(context), request.digest, approval),
        )
        return convert.template_to_proto(rec)

    # -- queries ---------------------------------------------------------------------

    def RunQuery(self, request: Any, context: Any) -> Iterator[pb.QueryEvent]:
        signed = convert.signed_request_from_proto(request.request)
        events = guarded(context, lambda: self.queries.run_query(peer_identity(context), signed))
        try:
            while (event := guarded(context, lambda: next(events, None))) is not None:
                yield convert.event_to_proto(event)
        finally:
            # A caller that goes away still gets its query finished and stored.
            events.close()

    def GetQuery(self, request: Any, context: Any) -> pb.QueryRecord:
        q = guarded(
            context, lambda: self.queries.get_query(peer_identity(context), request.query_id)
        )
        return convert.query_to_proto(q)

    def ListQueries(self, request: Any, context: Any) -> pb.ListQueriesReply:
        qs = guarded(
            context, lambda: self.queries.list_queries(peer_identity(context), request.limit)
        )
        return pb.ListQueriesReply(queries=[convert.query_to_proto(q) for q in qs])

    # -- nodes -----------------------------------------------------------------------

    def ListNodes(self, request: Any, context: Any) -> pb.ListNodesReply:
        nodes = guarded(context, lambda: self.service.list_nodes(peer_identity(context)))
        return pb.ListNodesReply(nodes=[convert.node_to_proto(n) for n in nodes])

    def GetBudgets(self, request: Any, context: Any) -> pb.GetBudgetsReply:
        budgets = guarded(context, lambda: self.service.budgets(peer_identity(context)))
        return pb.GetBudgetsReply(nodes=[convert.budgets_to_proto(b) for b in budgets])
