"""The coordinator's domain values: plain frozen dataclasses, no protobuf."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from tessera import results
from tessera.approvals import Approval
from tessera.templates.model import Mode

T = TypeVar("T")
OK = "OK"
# Statuses that say the node itself could not be reached in time (health NOT_SERVING).
UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


@dataclass(frozen=True)
class Loss:
    """A privacy loss: kind "epsilon" (pure DP) or "rho" (zCDP)."""

    kind: str
    value: float


@dataclass(frozen=True)
class NodeAnswer:
    """One node's answer to an Execute call, as the coordinator combines it."""

    organisation: str
    template_digest: str
    dataset: str
    dataset_version: int
    statistic: str
    dimensions: tuple[tuple[str, tuple[str, ...]], ...]
    measures: Mapping[str, results.Measure]
    cells: Sequence[results.Cell]
    cost: Loss
    charged: float
    from_cache: bool
    # The node's signed answer statement and the payload it covers (tessera.answers),
    # forwarded to the analyst unchanged.
    statement: bytes = b""
    statement_signature: bytes = b""
    payload: bytes = b""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SignedPart:
    """One node's signed statement as forwarded to the analyst. `payload` is empty
    unless the template permits a per-node breakdown."""

    organisation: str
    statement: bytes
    signature: bytes
    payload: bytes = b""


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """How one call to one node went: status "OK" with its value, or a gRPC status name
    and message (DEADLINE_EXCEEDED for a node that hung, UNAVAILABLE for one that is down)."""

    organisation: str
    status: str
    message: str
    latency_ms: float
    value: T | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK and self.value is not None


@dataclass(frozen=True)
class NodeReport:
    """A node's part in a query, as the analyst sees it."""

    organisation: str
    status: str
    message: str
    contributed: bool
    latency_ms: float


@dataclass(frozen=True)
class QueryResult:
    query_id: str
    template_digest: str
    template_id: str
    mode: Mode
    released: bool
    withheld_reason: str
    statistic: str
    dimensions: tuple[tuple[str, tuple[str, ...]], ...]
    cells: tuple[results.Cell, ...]
    nodes: tuple[NodeReport, ...]
    privacy_spent: Loss
    per_node: tuple[tuple[str, tuple[results.Cell, ...]], ...] = ()
    parts: tuple[SignedPart, ...] = ()
    # (body, signature) of the earlier request the parts answer, when re-released.
    answered_request: tuple[bytes, bytes] | None = None
    # Contributing nodes' notes on their data, "<organisation>: <note>".
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeProgress:
    """A progress event of a running query: one node has finished."""

    report: NodeReport
    nodes_total: int


@dataclass(frozen=True)
class QueryDone:
    result: QueryResult
    nodes_total: int


QueryEvent = NodeProgress | QueryDone


@dataclass(frozen=True)
class TemplateRecord:
    digest: str
    id: str
    version: int
    title: str
    canonical: bytes
    approvals: tuple[Approval, ...]
    state: str
    approvals_required: int
    submitted_by: str
    submitted_at: str


@dataclass(frozen=True)
class QueryRecord:
    query_id: str
    analyst: str
    analyst_key: str
    submitted_at: str
    state: str
    request_body: bytes
    request_signature: bytes
    result: QueryResult | None


@dataclass(frozen=True)
class DatasetBudget:
    name: str
    schema_version: int
    version: int
    # Opaque (keyed with the node's secret): the content hash never leaves a node.
    version_id: str
    total: Loss
    spent: Loss
    # The node's accountant for the dataset, and its lifetime spend as (epsilon, delta).
    accountant: str = ""
    epsilon_at_delta: float = 0.0
    delta: float = 0.0


@dataclass(frozen=True)
class NodeDescription:
    organisation: str
    datasets: tuple[DatasetBudget, ...]


@dataclass(frozen=True)
class NodeBudgets:
    organisation: str
    status: str
    message: str
    datasets: tuple[DatasetBudget, ...] = ()


@dataclass(frozen=True)
class NodeStatus:
    organisation: str
    address: str
    identity: str
    datasets: tuple[str, ...]
    # "SERVING", "NOT_SERVING" or "UNKNOWN".
    health: str
    detail: str = ""
