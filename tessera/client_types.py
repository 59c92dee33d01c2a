"""What the coordinator client returns: typed results, and their conversion from the wire.

`QueryResult` turns into rows, CSV, a pandas DataFrame (when pandas is installed) or
the JSON shape `tessera demo --json` writes for one query.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tessera import templates
from tessera.templates.model import Template
from tessera.wire.v1 import common_pb2, coordinator_pb2

pb = coordinator_pb2
_MODE_NAMES = {
    common_pb2.MODE_COMBINED: "combined",
    common_pb2.MODE_PER_NODE: "per_node",
    common_pb2.MODE_SECURE_AGGREGATION: "secure_aggregation",
    common_pb2.MODE_OVERLAP: "overlap",
}


class ClientError(Exception):
    """The coordinator refused a call, or could not be reached. `code` is the gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TemplateInfo:
    digest: str
    id: str
    version: int
    title: str
    state: str
    approvals: int
    approvals_required: int
    submitted_by: str
    submitted_at: str
    canonical: bytes

    @property
    def template(self) -> Template:
        return templates.parse_canonical(self.canonical)


@dataclass(frozen=True)
class Cell:
    key: dict[str, str]
    estimate: float
    ci95: tuple[float, float]
    suppressed: bool
    # The interval's guaranteed coverage (0.95, or more when the noise's discreteness
    # forces a wider interval); for a suppressed cell, the interval's too.
    coverage: float = 0.95


@dataclass(frozen=True)
class NodeReport:
    organisation: str
    status: str
    message: str
    contributed: bool
    latency_ms: float


@dataclass(frozen=True)
class Progress:
    """One node has finished: `done` of `total` nodes so far."""

    node: NodeReport
    done: int
    total: int


@dataclass(frozen=True)
class SignedPart:
    """A node's signed answer statement as the coordinator forwarded it (tessera.answers);
    `payload` (the node's own figures) only for templates permitting a per-node breakdown."""

    organisation: str
    statement: bytes
    signature: bytes
    payload: bytes


@dataclass(frozen=True)
class QueryResult:
    query_id: str
    template: str
    template_digest: str
    mode: str
    released: bool
    withheld_reason: str
    statistic: str
    dimensions: list[str]
    nodes: list[NodeReport]
    privacy_spent: dict[str, float]
    cells: list[Cell]
    per_node: dict[str, list[Cell]] | None = None
    # Filled in by Client.run_query, which knows them: the question as asked. Not part
    # of the result itself, so a stored result fetched later still compares equal.
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    template_title: str = field(default="", compare=False)
    # The nodes' signed statements, and the client's check of them (tessera.verify)
    # when it was given node keys to trust.
    parts: list[SignedPart] = field(default_factory=list)
    verification: Any = None
    # (body, signature) of the earlier request for the same question whose result this
    # is again, when the coordinator re-released it: the parts answer that request.
    answered_request: tuple[bytes, bytes] | None = None
    # What the contributing nodes say about the data under the figures (children with
    # records but no header row, say), in plain words.
    notes: list[str] = field(default_factory=list)

    @property
    def nodes_answered(self) -> list[str]:
        return [n.organisation for n in self.nodes if n.status == "OK"]

    @property
    def nodes_missing(self) -> dict[str, str]:
        """Each node that did not answer, with why: "STATUS: message"."""
        return {n.organisation: f"{n.status}: {n.message}" for n in self.nodes if n.status != "OK"}

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per cell. With a per-node breakdown, `scope` says whose cell it is."""
        scoped = [("combined", self.cells), *sorted((self.per_node or {}).items())]
        rows = []
        for scope, cells in scoped:
            for c in cells:
                row: dict[str, Any] = {"scope": scope} if self.per_node is not None else {}
                row.update(c.key)
                row.update(
                    estimate=c.estimate,
                    ci95_low=c.ci95[0],
                    ci95_high=c.ci95[1],
                    coverage=c.coverage,
                    suppressed=c.suppressed,
                )
                rows.append(row)
        return rows

    def to_csv(self, path: str | Path | None = None) -> str:
        """The rows as CSV text; also written to `path` when one is given."""
        rows = self.to_rows()
        columns = (
            (["scope"] if self.per_node is not None else [])
            + self.dimensions
            + ["estimate", "ci95_low", "ci95_high", "coverage", "suppressed"]
        )
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = out.getvalue()
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_pandas(self) -> Any:
        """A DataFrame, one row per cell (estimate NaN when suppressed, interval, coverage,
        suppressed), with the provenance in `.attrs`. Needs `tessera[notebook]`."""
        from tessera import notebook

        return notebook.to_pandas(self)

    def plot(self, question: str | None = None, ax: Any = None) -> Any:
        """A matplotlib Figure: estimates with interval bars, suppressed cells marked."""
        from tessera import notebook

        return notebook.plot(self, question=question, ax=ax)

    def to_json_dict(self) -> dict[str, Any]:
        """The shape `tessera demo --json` writes for one query."""

        def cells(cs: Sequence[Cell]) -> list[dict[str, Any]]:
            return [
                {
                    "key": dict(c.key),
                    "estimate": c.estimate,
                    "ci95": list(c.ci95),
                    "coverage": c.coverage,
                    "suppressed": c.suppressed,
                }
                for c in cs
            ]

        out: dict[str, Any] = {
            "template": self.template,
            "mode": self.mode,
            "nodes_answered": self.nodes_answered,
            "nodes_missing": list(self.nodes_missing),
            "privacy_spent": dict(self.privacy_spent),
            "cells": cells(self.cells),
            "notes": list(self.notes),
        }
        if self.per_node is not None:
            out["per_node"] = [
                {"organisation": org, "cells": cells(cs)}
                for org, cs in sorted(self.per_node.items())
            ]
        return out


@dataclass(frozen=True)
class QueryInfo:
    query_id: str
    analyst: str
    submitted_at: str
    state: str
    result: QueryResult | None
    # The analyst's signed request the query ran (to verify the result later).
    request_body: bytes = b""
    request_signature: bytes = b""


@dataclass(frozen=True)
class NodeInfo:
    organisation: str
    address: str
    identity: str
    datasets: list[str]
    health: str
    detail: str


@dataclass(frozen=True)
class DatasetBudget:
    name: str
    version: int
    kind: str
    total: float
    spent: float
    # The node's accountant (datasets of one population share one), the version's
    # opaque identifier, and the accountant's lifetime spend as (epsilon, delta).
    accountant: str = ""
    version_id: str = ""
    epsilon_at_delta: float = 0.0
    delta: float = 0.0

    @property
    def remaining(self) -> float:
        return max(self.total - self.spent, 0.0)


@dataclass(frozen=True)
class NodeBudget:
    organisation: str
    status: str
    datasets: list[DatasetBudget]


ProgressCallback = Callable[[Progress], None]


def error_from_rpc(e: grpc.RpcError) -> ClientError:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return ClientError(name, details or "")


def template_info(t: pb.TemplateRecord) -> TemplateInfo:
    canonical = t.template.canonical
    # Never trust a digest we did not compute: approvals and requests are signed over it.
    if templates.digest_of_bytes(canonical) != t.digest:
        raise ClientError(
            "DATA_LOSS", "the coordinator sent a template whose digest does not match"
        )
    return TemplateInfo(
        t.digest,
        t.id,
        t.version,
        t.title,
        t.state,
        len(t.template.approvals),
        t.approvals_required,
        t.submitted_by,
        t.submitted_at,
        canonical,
    )


def node_report(n: pb.NodeOutcome) -> NodeReport:
    return NodeReport(n.organisation, n.status, n.message, n.contributed, n.latency_ms)


def _cells(dims: list[str], cells: Sequence[common_pb2.ReleasedCell]) -> list[Cell]:
    return [
        Cell(
            dict(zip(dims, c.labels, strict=True)),
            c.estimate,
            (c.ci95_low, c.ci95_high),
            c.suppressed,
            c.coverage or 0.95,
        )
        for c in cells
    ]


def query_result(r: pb.QueryResult) -> QueryResult:
    dims = [d.name for d in r.dimensions]
    kind = r.privacy_spent.WhichOneof("loss") or "epsilon"
    mode = _MODE_NAMES.get(r.mode, "combined")
    return QueryResult(
        query_id=r.query_id,
        template=r.template_id,
        template_digest=r.template_digest,
        mode=mode,
        released=r.released,
        withheld_reason=r.withheld_reason,
        statistic=r.statistic,
        dimensions=dims,
        nodes=[node_report(n) for n in r.nodes],
        privacy_spent={kind: getattr(r.privacy_spent, kind)},
        cells=_cells(dims, r.cells),
        per_node={n.organisation: _cells(dims, n.cells) for n in r.per_node}
        if mode == "per_node" and r.released
        else None,
        parts=[SignedPart(p.organisation, p.statement, p.signature, p.payload) for p in r.parts],
        answered_request=(r.answered_request.canonical, r.answered_request.signature)
        if r.HasField("answered_request")
        else None,
        notes=list(r.notes),
    )


def query_info(q: pb.QueryRecord) -> QueryInfo:
    result = query_result(q.result) if q.HasField("result") else None
    return QueryInfo(
        q.query_id,
        q.analyst,
        q.submitted_at,
        q.state,
        result,
        q.request.canonical,
        q.request.signature,
    )


def node_info(n: coordinator_pb2.NodeEntry) -> NodeInfo:
    return NodeInfo(n.organisation, n.address, n.identity, list(n.datasets), n.health, n.detail)


def node_budget(n: coordinator_pb2.NodeBudget) -> NodeBudget:
    datasets = []
    for d in n.datasets:
        kind = d.budget_total.WhichOneof("loss") or "epsilon"
        total, spent = getattr(d.budget_total, kind), getattr(d.budget_spent, kind)
        datasets.append(
            DatasetBudget(
                d.name,
                d.version,
                kind,
                total,
                spent,
                d.accountant,
                d.version_id,
                d.epsilon_at_delta,
                d.delta,
            )
        )
    return NodeBudget(n.organisation, n.status, datasets)
