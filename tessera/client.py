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

import dataclasses
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from tessera import approvals, requests, templates, verify
from tessera.client_types import (
    Cell,
    ClientError,
    DatasetBudget,
    NodeBudget,
    NodeInfo,
    NodeReport,
    Progress,
    ProgressCallback,
    QueryInfo,
    QueryResult,
    TemplateInfo,
    error_from_rpc,
    node_budget,
    node_info,
    node_report,
    query_info,
    query_result,
    template_info,
)
from tessera.keys import SigningKey
from tessera.templates.model import Mode, Template
from tessera.tls import TlsFiles
from tessera.wire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

pb = coordinator_pb2
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
__all__ = [
    "Cell",
    "Client",
    "ClientError",
    "DatasetBudget",
    "NodeBudget",
    "NodeInfo",
    "NodeReport",
    "Progress",
    "QueryInfo",
    "QueryResult",
    "TemplateInfo",
]


class Client:
    def __init__(
        self,
        address: str,
        tls: TlsFiles,
        signing_key: SigningKey | None = None,
        *,
        timeout: float = 120.0,
        trust: Mapping[str, str] | None = None,
    ) -> None:
        self.address = address
        self.signing_key = signing_key
        self.timeout = timeout
        # Node keys the analyst trusts (organisation -> key id, tessera.verify.load_trust).
        # With them, every result is checked against the nodes' signed answers and one
        # that does not verify raises VerificationFailed.
        self.trust = dict(trust) if trust is not None else None
        self._channel = grpc.secure_channel(address, tls.load().channel_credentials())
        self._stub = coordinator_pb2_grpc.CoordinatorServiceStub(self._channel)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, timeout: float = 120.0
    ) -> Client:
        """A client from the variables the CLI reads: TESSERA_COORDINATOR (host:port),
        TESSERA_TLS_DIR and TESSERA_IDENTITY (DIR/<identity>.crt|.key, DIR/ca.crt), and
        optionally TESSERA_KEY (your signing key file; without it the client cannot sign)
        and TESSERA_TRUST (node keys to verify every result with, see tessera.verify)."""
        import os

        env = os.environ if environ is None else environ
        missing = [
            n
            for n in ("TESSERA_COORDINATOR", "TESSERA_TLS_DIR", "TESSERA_IDENTITY")
            if not env.get(n)
        ]
        if missing:
            raise ValueError(f"Client.from_env(): set {', '.join(missing)}")
        tls = TlsFiles.for_name(Path(env["TESSERA_TLS_DIR"]).expanduser(), env["TESSERA_IDENTITY"])
        key_file = env.get("TESSERA_KEY")
        key = SigningKey.load(Path(key_file).expanduser()) if key_file else None
        trust_file = env.get("TESSERA_TRUST")
        trust = verify.load_trust(Path(trust_file).expanduser()) if trust_file else None
        return cls(env["TESSERA_COORDINATOR"], tls, key, timeout=timeout, trust=trust)

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
            raise error_from_rpc(e) from None

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
        return template_info(
            self._call("SubmitTemplate", pb.SubmitTemplateRequest(canonical=canonical))
        )

    def list_templates(self, state: str = "") -> list[TemplateInfo]:
        reply = self._call("ListTemplates", pb.ListTemplatesRequest(state=state))
        return [template_info(t) for t in reply.templates]

    def get_template(self, digest_or_id: str) -> TemplateInfo:
        """By digest, or by id for the newest version with that id."""
        return template_info(
            self._call("GetTemplate", pb.GetTemplateRequest(digest_or_id=digest_or_id))
        )

    def approve(self, digest: str) -> TemplateInfo:
        """Sign the template with this digest (as fetched and checked here) and send the
        approval. Takes the full digest, never an id: you sign what you have read."""
        if not _DIGEST.match(digest):
            raise ValueError("approve() takes the template's full 64-hex digest")
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
        return template_info(reply)

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
        mode: str | None = None,
        nodes: Sequence[str] | None = None,
        on_progress: ProgressCallback | None = None,
        lifetime: timedelta = timedelta(minutes=10),
    ) -> QueryResult:
        """Sign a request for a published template and run it across the nodes hosting
        its dataset (or the named `nodes`), calling `on_progress` as each one finishes.

        With no `mode`: secure_aggregation where the template allows it (declares a
        threshold) and it is combined-only or asked of at least three nodes; else
        combined. The mode is part of what the analyst signs."""
        key = self._key()
        info = self.resolve_template(template_id_or_digest)
        overlap = info.template.overlap
        if overlap is not None:
            # The audience is the party order: one organisation per dataset, in order.
            mode = mode or Mode.OVERLAP.value
            if nodes is None:
                nodes = self._overlap_nodes([d.dataset for d in overlap.datasets])
        if nodes is None:
            dataset = info.template.dataset
            nodes = [n.organisation for n in self.nodes() if dataset in n.datasets]
            if not nodes:
                raise ClientError("FAILED_PRECONDITION", f"no node hosts the dataset {dataset}")
        if mode is None:
            access = info.template.access
            secure = access.threshold and (not access.per_node_breakdown or len(set(nodes)) >= 3)
            mode = Mode.SECURE_AGGREGATION.value if secure else Mode.COMBINED.value
        request = requests.new_request(
            template_digest=info.digest,
            params={k: v.isoformat() if isinstance(v, date) else v for k, v in params.items()},
            mode=Mode(mode),
            audience=list(nodes),
            analyst_key=key.public.key_id,
            now=datetime.now(UTC),
            lifetime=lifetime,
        )
        result = self.submit_request(requests.sign(request, key), on_progress)
        return dataclasses.replace(result, params=dict(request.params), template_title=info.title)

    def _overlap_nodes(self, datasets: Sequence[str]) -> list[str]:
        known = self.nodes()
        out = []
        for dataset in datasets:
            hosts = sorted(n.organisation for n in known if dataset in n.datasets)
            if len(hosts) != 1:
                raise ClientError(
                    "FAILED_PRECONDITION",
                    f"{len(hosts)} nodes host {dataset}"
                    + (f" ({', '.join(hosts)})" if hosts else "")
                    + ": name one organisation per dataset, in the template's dataset order",
                )
            out.append(hosts[0])
        return out

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
                    result = query_result(event.result)
                    if self.trust is not None:
                        result = self._checked(result, signed, self.trust)
                    return result
                done += 1
                if on_progress is not None:
                    on_progress(Progress(node_report(event.node), done, event.nodes_total))
        except grpc.RpcError as e:
            raise error_from_rpc(e) from None
        raise ClientError("UNAVAILABLE", "the coordinator ended the query without a result")

    def verify_query(
        self, query_id: str, trust: Mapping[str, str] | None = None
    ) -> verify.Verification:
        """Fetch a stored query and check it against the nodes' signed answers."""
        trust = trust if trust is not None else self.trust
        if trust is None:
            raise ValueError("verify_query() needs the node keys you trust")
        q = self.get_query(query_id)
        if q.result is None:
            raise ClientError("FAILED_PRECONDITION", "the query has no result yet")
        signed = requests.SignedRequest(q.request_body, q.request_signature)
        info = self.get_template(q.result.template_digest)
        return verify.verify_result(
            q.result, request=signed, template_canonical=info.canonical, trust=trust
        )

    def _checked(
        self, result: QueryResult, signed: requests.SignedRequest, trust: Mapping[str, str]
    ) -> QueryResult:
        info = self.get_template(result.template_digest)
        v = verify.verify_result(
            result, request=signed, template_canonical=info.canonical, trust=trust
        )
        if not v.ok:
            raise verify.VerificationFailed(v)
        return dataclasses.replace(result, verification=v)

    def get_query(self, query_id: str) -> QueryInfo:
        return query_info(self._call("GetQuery", pb.GetQueryRequest(query_id=query_id)))

    def list_queries(self, limit: int = 100) -> list[QueryInfo]:
        reply = self._call("ListQueries", pb.ListQueriesRequest(limit=limit))
        return [query_info(q) for q in reply.queries]

    # -- nodes -----------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        reply = self._call("ListNodes", pb.ListNodesRequest())
        return [node_info(n) for n in reply.nodes]

    def budgets(self) -> list[NodeBudget]:
        reply = self._call("GetBudgets", pb.GetBudgetsRequest())
        return [node_budget(n) for n in reply.nodes]

    # -- helpers ---------------------------------------------------------------------

    def _key(self) -> SigningKey:
        if self.signing_key is None:
            raise ValueError("this call signs: give the Client your signing_key")
        return self.signing_key
