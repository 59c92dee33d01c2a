"""A Python client of the coordinator for analysts and approvers, for scripts and notebooks.

    from tessera.client import Client
    from tessera.keys import SigningKey
    from tessera.tls import TlsFiles

    client = Client("localhost:7443", TlsFiles.for_name(Path("certs"), "alice"),
                    SigningKey.load(Path("alice.key")))
    result = client.run_query("cla-by-age-and-placement", {"on_date": "2025-03-31"})
    result.to_csv("cla.csv")

Every call goes over mutual TLS. A refusal raises ClientError with the gRPC status
name in `code`. The client checks what it signs: an approval is made over the digest
of the template bytes it fetched, and a request over the digest of the template it
was shown.
"""

from __future__ import annotations

import csv
import importlib
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from tessera import approvals, requests, templates
from tessera.keys import SigningKey
from tessera.templates.model import Mode, Template
from tessera.tls import TlsFiles
from tessera.wire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

pb = coordinator_pb2
_MODE_NAMES = {
    common_pb2.MODE_COMBINED: "combined",
    common_pb2.MODE_PER_NODE: "per_node",
    common_pb2.MODE_SECURE_AGGREGATION: "secure_aggregation",
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
            + ["estimate", "ci95_low", "ci95_high", "suppressed"]
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
        try:
            pandas = importlib.import_module("pandas")
        except ImportError:
            raise ImportError(
                "to_pandas() needs pandas, which is not installed: pip install pandas "
                "(or use to_rows() / to_csv())"
            ) from None
        return pandas.DataFrame(self.to_rows())

    def to_json_dict(self) -> dict[str, Any]:
        """The shape `tessera demo --json` writes for one query."""

        def cells(cs: Sequence[Cell]) -> list[dict[str, Any]]:
            return [{"key": dict(c.key), "estimate": c.estimate, "ci95": list(c.ci95)} for c in cs]

        out: dict[str, Any] = {
            "template": self.template,
            "mode": self.mode,
            "nodes_answered": self.nodes_answered,
            "nodes_missing": list(self.nodes_missing),
            "privacy_spent": dict(self.privacy_spent),
            "cells": cells(self.cells),
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

    @property
    def remaining(self) -> float:
        return max(self.total - self.spent, 0.0)


@dataclass(frozen=True)
class NodeBudget:
    organisation: str
    status: str
    datasets: list[DatasetBudget]


ProgressCallback = Callable[[Progress], None]


class Client:
    def __init__(
        self,
        address: str,
        tls: TlsFiles,
        signing_key: SigningKey | None = None,
        *,
        timeout: float = 120.0,
    ) -> None:
        self.address = address
        self.signing_key = signing_key
        self.timeout = timeout
        self._channel = grpc.secure_channel(address, tls.load().channel_credentials())
        self._stub = coordinator_pb2_grpc.CoordinatorServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _error(e) from None

    # -- templates -------------------------------------------------------------------

    def submit_template(self, template_or_path: Template | str | Path | bytes) -> TemplateInfo:
        """Submit a template (a Template, a TOML file path, or canonical bytes) for approval."""
        if isinstance(template_or_path, Template):
            canonical = templates.encode(template_or_path)
        elif isinstance(template_or_path, bytes):
            canonical = template_or_path
        else:
            text = Path(template_or_path).read_text(encoding="utf-8")
            canonical = templates.encode(templates.load_toml(text))
        return _template(
            self._call("SubmitTemplate", pb.SubmitTemplateRequest(canonical=canonical))
        )

    def list_templates(self, state: str = "") -> list[TemplateInfo]:
        reply = self._call("ListTemplates", pb.ListTemplatesRequest(state=state))
        return [_template(t) for t in reply.templates]

    def get_template(self, digest_or_id: str) -> TemplateInfo:
        """By digest, or by id for the newest version with that id."""
        return _template(
            self._call("GetTemplate", pb.GetTemplateRequest(digest_or_id=digest_or_id))
        )

    def approve(self, digest: str) -> TemplateInfo:
        """Sign the template with this digest (as fetched and checked here) and send the
        approval."""
        key = self._key()
        info = self.get_template(digest)
        signed = approvals.sign(info.digest, key)
        reply = self._call(
            "AddApproval",
            pb.AddApprovalRequest(
                digest=info.digest,
                approval=common_pb2.Approval(
                    approver_key=signed.approver_key, signature=signed.signature
                ),
            ),
        )
        return _template(reply)

    # -- queries ---------------------------------------------------------------------

    def resolve_template(self, template_id_or_digest: str) -> TemplateInfo:
        """The template a query would ask: by digest, or the newest published version
        of an id (or, if none is published, the newest version, which will be refused)."""
        matches = [t for t in self.list_templates("published") if t.id == template_id_or_digest]
        if matches:
            return max(matches, key=lambda t: t.version)
        return self.get_template(template_id_or_digest)

    def run_query(
        self,
        template_id_or_digest: str,
        params: Mapping[str, Any],
        mode: str = "combined",
        nodes: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
        lifetime: timedelta = timedelta(minutes=10),
    ) -> QueryResult:
        """Sign a request for a published template and run it across the nodes hosting
        its dataset (or the named `nodes`), calling `on_progress` as each one finishes."""
        key = self._key()
        info = self.resolve_template(template_id_or_digest)
        if nodes is None:
            dataset = info.template.dataset
            nodes = [n.organisation for n in self.nodes() if dataset in n.datasets]
            if not nodes:
                raise ClientError("FAILED_PRECONDITION", f"no node hosts the dataset {dataset}")
        request = requests.new_request(
            template_digest=info.digest,
            params={k: v.isoformat() if isinstance(v, date) else v for k, v in params.items()},
            mode=Mode(mode),
            audience=list(nodes),
            analyst_key=key.public.key_id,
            now=datetime.now(UTC),
            lifetime=lifetime,
        )
        return self.submit_request(requests.sign(request, key), on_progress)

    def submit_request(
        self, signed: requests.SignedRequest, on_progress: ProgressCallback | None = None
    ) -> QueryResult:
        """Run an already signed request (or retry one: its stored result comes back)."""
        message = pb.SubmitQueryRequest(
            request=common_pb2.SignedRequest(canonical=signed.body, signature=signed.signature)
        )
        done = 0
        try:
            for event in self._stub.RunQuery(message, timeout=self.timeout):
                if event.HasField("result"):
                    return _result(event.result)
                done += 1
                if on_progress is not None:
                    on_progress(Progress(_node(event.node), done, event.nodes_total))
        except grpc.RpcError as e:
            raise _error(e) from None
        raise ClientError("UNAVAILABLE", "the coordinator ended the query without a result")

    def get_query(self, query_id: str) -> QueryInfo:
        return _query(self._call("GetQuery", pb.GetQueryRequest(query_id=query_id)))

    def list_queries(self, limit: int = 100) -> list[QueryInfo]:
        reply = self._call("ListQueries", pb.ListQueriesRequest(limit=limit))
        return [_query(q) for q in reply.queries]

    # -- nodes -----------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        reply = self._call("ListNodes", pb.ListNodesRequest())
        return [
            NodeInfo(n.organisation, n.address, n.identity, list(n.datasets), n.health, n.detail)
            for n in reply.nodes
        ]

    def budgets(self) -> list[NodeBudget]:
        reply = self._call("GetBudgets", pb.GetBudgetsRequest())
        out = []
        for n in reply.nodes:
            datasets = []
            for d in n.datasets:
                kind = d.budget_total.WhichOneof("loss") or "epsilon"
                datasets.append(
                    DatasetBudget(
                        d.name,
                        d.version,
                        kind,
                        getattr(d.budget_total, kind),
                        getattr(d.budget_spent, kind),
                    )
                )
            out.append(NodeBudget(n.organisation, n.status, datasets))
        return out

    # -- helpers ---------------------------------------------------------------------

    def _key(self) -> SigningKey:
        if self.signing_key is None:
            raise ValueError("this call signs: give the Client your signing_key")
        return self.signing_key


def _error(e: grpc.RpcError) -> ClientError:
    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    return ClientError(name, details or "")


def _template(t: pb.TemplateRecord) -> TemplateInfo:
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


def _node(n: pb.NodeOutcome) -> NodeReport:
    return NodeReport(n.organisation, n.status, n.message, n.contributed, n.latency_ms)


def _cells(dims: list[str], cells: Sequence[common_pb2.ReleasedCell]) -> list[Cell]:
    return [
        Cell(
            dict(zip(dims, c.labels, strict=True)),
            c.estimate,
            (c.ci95_low, c.ci95_high),
            c.suppressed,
        )
        for c in cells
    ]


def _result(r: pb.QueryResult) -> QueryResult:
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
        nodes=[_node(n) for n in r.nodes],
        privacy_spent={kind: getattr(r.privacy_spent, kind)},
        cells=_cells(dims, r.cells),
        per_node={n.organisation: _cells(dims, n.cells) for n in r.per_node}
        if mode == "per_node" and r.released
        else None,
    )


def _query(q: pb.QueryRecord) -> QueryInfo:
    result = _result(q.result) if q.HasField("result") else None
    return QueryInfo(q.query_id, q.analyst, q.submitted_at, q.state, result)
