"""The demo's security drill. Each drill plays a compromised coordinator or a
careless client talking straight to a node with the coordinator's certificate,
and shows that the node refuses on its own evidence and spends nothing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc

from tessera import approvals, canonical, requests, templates
from tessera.keys import SigningKey
from tessera.templates.model import Mode, Template
from tessera.tls import TlsFiles, pinned_options
from tessera.wire.v1 import common_pb2, node_pb2, node_pb2_grpc


@dataclass(frozen=True)
class DrillResult:
    name: str
    status: str
    budget_spent: float
    detail: str


def signed_template(t: Template, signers: Sequence[SigningKey]) -> common_pb2.SignedTemplate:
    digest = templates.digest(t)
    sigs = [approvals.sign(digest, k) for k in signers]
    return common_pb2.SignedTemplate(
        canonical=templates.encode(t),
        approvals=[
            common_pb2.Approval(approver_key=a.approver_key, signature=a.signature) for a in sigs
        ],
    )


def execute_request(
    st: common_pb2.SignedTemplate,
    params: Mapping[str, Any],
    analyst: SigningKey,
    audience: Sequence[str],
    *,
    nonce: str | None = None,
) -> node_pb2.ExecuteRequest:
    req = requests.new_request(
        template_digest=templates.digest_of_bytes(st.canonical),
        params=params,
        mode=Mode.COMBINED,
        audience=audience,
        analyst_key=analyst.public.key_id,
        now=datetime.now(UTC),
    )
    if nonce is not None:
        req = dataclasses.replace(req, nonce=nonce)
    signed = requests.sign(req, analyst)
    return node_pb2.ExecuteRequest(
        template=st,
        request=common_pb2.SignedRequest(canonical=signed.body, signature=signed.signature),
    )


class NodeDriller:
    def __init__(
        self,
        tls: TlsFiles,
        port: int,
        organisation: str,
        dataset: str,
        identity: str | None = None,
    ) -> None:
        # Talking to a node directly: pin its certificate identity, as the coordinator does.
        options = pinned_options(identity) if identity else []
        self.channel = grpc.secure_channel(
            f"localhost:{port}", tls.load().channel_credentials(), options=options
        )
        self.stub = node_pb2_grpc.NodeServiceStub(self.channel)
        self.organisation = organisation
        self.dataset = dataset

    def close(self) -> None:
        self.channel.close()

    def spent(self) -> float:
        reply = self.stub.GetBudget(node_pb2.GetBudgetRequest(), timeout=10)
        total = 0.0
        for d in reply.datasets:
            if d.name == self.dataset:
                kind = d.budget_spent.WhichOneof("loss")
                total += getattr(d.budget_spent, kind) if kind else 0.0
        return total

    def drill(self, name: str, make: Callable[[], node_pb2.ExecuteRequest]) -> DrillResult:
        before = self.spent()
        try:
            self.stub.Execute(make(), timeout=30)
            status, detail = "OK", "answered (the drill expected a refusal)"
        except grpc.RpcError as e:
            status, detail = e.code().name, str(e.details())
        return DrillResult(name, status, round(self.spent() - before, 12), detail)


def run_drills(
    *,
    tls: TlsFiles,
    councils: tuple[str, int],
    police: tuple[str, int],
    t_council: Template,
    council_params: Mapping[str, Any],
    t_police: Template,
    police_periods: Sequence[Mapping[str, Any]],
    approvers: Sequence[SigningKey],
    analyst: SigningKey,
    identities: Mapping[str, str] | None = None,
) -> tuple[list[DrillResult], list[DrillResult]]:
    """Returns (drills, setup spends made to exhaust the police budget). `identities`
    maps an organisation to its node's certificate identity, which is pinned."""
    ids = dict(identities or {})
    org, port = councils
    node = NodeDriller(tls, port, org, t_council.dataset, ids.get(org))
    good = signed_template(t_council, approvers[:2])
    drills = []
    try:
        # 1. The template is changed after it was signed: a larger epsilon slipped in.
        bigger = dataclasses.replace(
            t_council, privacy=dataclasses.replace(t_council.privacy, epsilon=9.0)
        )

        def tampered() -> node_pb2.ExecuteRequest:
            req = execute_request(good, council_params, analyst, [org])
            req.template.canonical = templates.encode(bigger)
            return req

        drills.append(node.drill("tampered template", tampered))
        # 2. Only one of the two approvals this node requires.
        one = signed_template(t_council, approvers[:1])
        drills.append(
            node.drill(
                "too few signatures", lambda: execute_request(one, council_params, analyst, [org])
            )
        )
        # 3. A request reusing an answered request's nonce.
        first = execute_request(good, council_params, analyst, [org])
        node.stub.Execute(first, timeout=30)
        used = canonical.decode(first.request.canonical)["nonce"]
        other_params = dict(council_params)
        other_params.update({k: v for k, v in _shift(t_council, council_params).items()})
        drills.append(
            node.drill(
                "replayed request",
                lambda: execute_request(good, other_params, analyst, [org], nonce=used),
            )
        )
        # 4. A parameter outside its declared domain.
        bad = {k: "2099-01-01" for k in council_params}
        drills.append(
            node.drill(
                "parameter outside its domain", lambda: execute_request(good, bad, analyst, [org])
            )
        )
    finally:
        node.close()

    # 5. Spend the police budget down with distinct questions, then one more.
    porg, pport = police
    pnode = NodeDriller(tls, pport, porg, t_police.dataset, ids.get(porg))
    setup = []
    try:
        pst = signed_template(t_police, approvers[1:3])
        for i, period in enumerate(police_periods[:-1]):
            req = execute_request(pst, period, analyst, [porg])
            setup.append(pnode.drill(f"police question {i + 1}", _const(req)))
        drills.append(
            pnode.drill(
                "budget exhausted",
                lambda: execute_request(pst, police_periods[-1], analyst, [porg]),
            )
        )
    finally:
        pnode.close()
    return drills, setup


def _const(req: node_pb2.ExecuteRequest) -> Callable[[], node_pb2.ExecuteRequest]:
    return lambda: req


def _shift(t: Template, params: Mapping[str, Any]) -> dict[str, Any]:
    """The same question for the previous year, so the replay is a *different* request."""
    out = {}
    for k, v in params.items():
        if isinstance(v, str) and len(v) == 10 and v[4] == "-":
            out[k] = f"{int(v[:4]) - 1}{v[4:]}"
    return out
