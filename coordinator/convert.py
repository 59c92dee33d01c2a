"""Translation between the wire (protobuf) and the coordinator's domain values.

The only module of the coordinator that builds or reads messages field by field.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

from tessera import approvals, intervals, requests, results
from tessera.coordinator.model import (
    DatasetBudget,
    Loss,
    NodeAnswer,
    NodeBudgets,
    NodeDescription,
    NodeProgress,
    NodeReport,
    NodeStatus,
    QueryDone,
    QueryEvent,
    QueryRecord,
    QueryResult,
    SignedPart,
    TemplateRecord,
)
from tessera.templates.model import Mode
from tessera.wire.v1 import common_pb2, coordinator_pb2, node_pb2

_MODES = {
    Mode.COMBINED: common_pb2.MODE_COMBINED,
    Mode.PER_NODE: common_pb2.MODE_PER_NODE,
    Mode.SECURE_AGGREGATION: common_pb2.MODE_SECURE_AGGREGATION,
    Mode.OVERLAP: common_pb2.MODE_OVERLAP,
}
_MODES_BACK = {v: k for k, v in _MODES.items()}


# -- shared pieces ---------------------------------------------------------------------


def loss_to_proto(loss: Loss) -> common_pb2.PrivacyLoss:
    if loss.kind == "epsilon":
        return common_pb2.PrivacyLoss(epsilon=loss.value)
    return common_pb2.PrivacyLoss(rho=loss.value)


def loss_from_proto(p: common_pb2.PrivacyLoss) -> Loss:
    kind = p.WhichOneof("loss") or "epsilon"
    return Loss(kind, float(getattr(p, kind)))


def cell_to_proto(c: results.Cell) -> common_pb2.ReleasedCell:
    return common_pb2.ReleasedCell(
        labels=list(c.labels),
        estimate=c.estimate,
        ci95_low=c.ci95_low,
        ci95_high=c.ci95_high,
        suppressed=c.suppressed,
        coverage=c.coverage,
    )


def cell_from_proto(c: common_pb2.ReleasedCell) -> results.Cell:
    return results.Cell(
        tuple(c.labels),
        c.estimate,
        c.ci95_low,
        c.ci95_high,
        c.suppressed,
        c.coverage or intervals.LEVEL,
    )


def _cells(cells: Sequence[common_pb2.ReleasedCell]) -> tuple[results.Cell, ...]:
    return tuple(cell_from_proto(c) for c in cells)


class _NodeCells(Sequence[results.Cell]):
    """A node's own cells, converted only when read. Combining reads just their count;
    only a per-node answer reads the cells themselves, and building them for every
    node of every query was a tenth of the coordinator's CPU."""

    __slots__ = ("_cells", "_raw")

    def __init__(self, raw: Sequence[common_pb2.ReleasedCell]) -> None:
        self._raw = raw
        self._cells: tuple[results.Cell, ...] | None = None

    def _all(self) -> tuple[results.Cell, ...]:
        if self._cells is None:
            self._cells = _cells(self._raw)
        return self._cells

    def __len__(self) -> int:
        return len(self._raw)

    @overload
    def __getitem__(self, i: int) -> results.Cell: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[results.Cell, ...]: ...
    def __getitem__(self, i: int | slice) -> results.Cell | tuple[results.Cell, ...]:
        return self._all()[i]

    def __iter__(self) -> Iterator[results.Cell]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _NodeCells):
            other = other._all()
        return isinstance(other, tuple) and self._all() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._all())


def dataset_from_proto(d: common_pb2.DatasetInfo) -> DatasetBudget:
    return DatasetBudget(
        d.name,
        d.schema_version,
        d.version,
        d.version_id,
        loss_from_proto(d.budget_total),
        loss_from_proto(d.budget_spent),
        d.accountant,
        d.epsilon_at_delta,
        d.delta,
    )


def dataset_to_proto(d: DatasetBudget) -> common_pb2.DatasetInfo:
    return common_pb2.DatasetInfo(
        name=d.name,
        schema_version=d.schema_version,
        version=d.version,
        version_id=d.version_id,
        budget_total=loss_to_proto(d.total),
        budget_spent=loss_to_proto(d.spent),
        accountant=d.accountant,
        epsilon_at_delta=d.epsilon_at_delta,
        delta=d.delta,
    )


# -- node replies ----------------------------------------------------------------------


def execute_request(
    canonical: bytes, approval_list: Sequence[approvals.Approval], signed: requests.SignedRequest
) -> node_pb2.ExecuteRequest:
    return node_pb2.ExecuteRequest(
        template=signed_template(canonical, approval_list),
        request=common_pb2.SignedRequest(canonical=signed.body, signature=signed.signature),
    )


def _noise(parts: Sequence[common_pb2.NoiseComponent]) -> tuple[intervals.NoisePart, ...]:
    """A measure's noise parts; a malformed one is a ValueError (the answer is refused)."""
    return tuple(intervals.NoisePart(p.mechanism, p.scale) for p in parts)


def answer_from_proto(reply: node_pb2.ExecuteReply) -> NodeAnswer:
    a = reply.answer
    measures = {
        m.name: results.Measure(
            m.name,
            tuple(m.values),  # int64 on the wire: already Python ints
            m.variance,
            m.ci95_half_width,
            m.ci975_half_width,
            _noise(m.noise),
        )
        for m in a.measures
    }
    return NodeAnswer(
        organisation=reply.organisation,
        template_digest=a.template_digest,
        dataset=a.dataset,
        dataset_version=a.dataset_version,
        statistic=a.statistic,
        dimensions=tuple((d.name, tuple(d.labels)) for d in a.dimensions),
        measures=measures,
        cells=_NodeCells(a.cells),
        cost=loss_from_proto(a.cost),
        charged=loss_from_proto(a.charged).value,
        from_cache=a.from_cache,
        notes=tuple(a.notes),
        statement=reply.statement,
        statement_signature=reply.statement_signature,
        payload=reply.payload,
    )


def description_from_proto(
    reply: node_pb2.DescribeReply | node_pb2.GetBudgetReply,
) -> NodeDescription:
    """A node's organisation and datasets with their budgets (Describe and GetBudget)."""
    return NodeDescription(reply.organisation, tuple(dataset_from_proto(d) for d in reply.datasets))


# -- coordinator messages ----------------------------------------------------------------


def signed_template(
    canonical: bytes, approval_list: Sequence[approvals.Approval]
) -> common_pb2.SignedTemplate:
    return common_pb2.SignedTemplate(
        canonical=canonical,
        approvals=[
            common_pb2.Approval(approver_key=a.approver_key, signature=a.signature)
            for a in approval_list
        ],
    )


def template_to_proto(t: TemplateRecord) -> coordinator_pb2.TemplateRecord:
    return coordinator_pb2.TemplateRecord(
        digest=t.digest,
        id=t.id,
        version=t.version,
        title=t.title,
        template=signed_template(t.canonical, t.approvals),
        state=t.state,
        approvals_required=t.approvals_required,
        submitted_by=t.submitted_by,
        submitted_at=t.submitted_at,
    )


def approval_from_proto(a: common_pb2.Approval) -> approvals.Approval:
    return approvals.Approval(a.approver_key, a.signature)


def signed_request_from_proto(r: common_pb2.SignedRequest) -> requests.SignedRequest:
    return requests.SignedRequest(r.canonical, r.signature)


def report_to_proto(r: NodeReport) -> coordinator_pb2.NodeOutcome:
    return coordinator_pb2.NodeOutcome(
        organisation=r.organisation,
        status=r.status,
        message=r.message,
        contributed=r.contributed,
        latency_ms=r.latency_ms,
    )


def result_to_proto(r: QueryResult) -> coordinator_pb2.QueryResult:
    return coordinator_pb2.QueryResult(
        query_id=r.query_id,
        template_digest=r.template_digest,
        template_id=r.template_id,
        mode=_MODES[r.mode],
        released=r.released,
        withheld_reason=r.withheld_reason,
        dimensions=[
            common_pb2.Dimension(name=n, labels=list(labels)) for n, labels in r.dimensions
        ],
        cells=[cell_to_proto(c) for c in r.cells],
        nodes=[report_to_proto(n) for n in r.nodes],
        privacy_spent=loss_to_proto(r.privacy_spent),
        per_node=[
            coordinator_pb2.NodeCells(organisation=org, cells=[cell_to_proto(c) for c in cs])
            for org, cs in r.per_node
        ],
        statistic=r.statistic,
        parts=[
            coordinator_pb2.SignedPart(
                organisation=p.organisation,
                statement=p.statement,
                signature=p.signature,
                payload=p.payload,
            )
            for p in r.parts
        ],
        notes=list(r.notes),
        answered_request=None
        if r.answered_request is None
        else common_pb2.SignedRequest(
            canonical=r.answered_request[0], signature=r.answered_request[1]
        ),
    )


def result_from_proto(p: coordinator_pb2.QueryResult) -> QueryResult:
    return QueryResult(
        query_id=p.query_id,
        template_digest=p.template_digest,
        template_id=p.template_id,
        mode=_MODES_BACK[p.mode],
        released=p.released,
        withheld_reason=p.withheld_reason,
        statistic=p.statistic,
        dimensions=tuple((d.name, tuple(d.labels)) for d in p.dimensions),
        cells=_cells(p.cells),
        nodes=tuple(
            NodeReport(n.organisation, n.status, n.message, n.contributed, n.latency_ms)
            for n in p.nodes
        ),
        privacy_spent=loss_from_proto(p.privacy_spent),
        per_node=tuple((n.organisation, _cells(n.cells)) for n in p.per_node),
        parts=tuple(
            SignedPart(s.organisation, s.statement, s.signature, s.payload) for s in p.parts
        ),
        answered_request=(p.answered_request.canonical, p.answered_request.signature)
        if p.HasField("answered_request")
        else None,
        notes=tuple(p.notes),
    )


def encode_result(r: QueryResult) -> bytes:
    return result_to_proto(r).SerializeToString(deterministic=True)


def decode_result(data: bytes) -> QueryResult:
    return result_from_proto(coordinator_pb2.QueryResult.FromString(data))


def event_to_proto(e: QueryEvent) -> coordinator_pb2.QueryEvent:
    if isinstance(e, NodeProgress):
        return coordinator_pb2.QueryEvent(node=report_to_proto(e.report), nodes_total=e.nodes_total)
    assert isinstance(e, QueryDone)
    return coordinator_pb2.QueryEvent(result=result_to_proto(e.result), nodes_total=e.nodes_total)


def query_to_proto(q: QueryRecord) -> coordinator_pb2.QueryRecord:
    out = coordinator_pb2.QueryRecord(
        query_id=q.query_id, analyst=q.analyst, submitted_at=q.submitted_at, state=q.state
    )
    if q.result is not None:
        out.result.CopyFrom(result_to_proto(q.result))
    out.request.CopyFrom(
        common_pb2.SignedRequest(canonical=q.request_body, signature=q.request_signature)
    )
    return out


def node_to_proto(n: NodeStatus) -> coordinator_pb2.NodeEntry:
    return coordinator_pb2.NodeEntry(
        organisation=n.organisation,
        address=n.address,
        identity=n.identity,
        datasets=list(n.datasets),
        health=n.health,
        detail=n.detail,
    )


def budgets_to_proto(b: NodeBudgets) -> coordinator_pb2.NodeBudget:
    return coordinator_pb2.NodeBudget(
        organisation=b.organisation,
        status=b.status,
        datasets=[dataset_to_proto(d) for d in b.datasets],
    )
