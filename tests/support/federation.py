"""A small real federation for tests: CA and certificates, keys, ingested data,
node configs, and helpers to build signed requests. Everything is made fresh
in a temporary directory."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc

from tessera import approvals, requests, roster, schemas, templates
from tessera.config import ApproversConfig, TlsConfig, TrustedApprover
from tessera.keys import SigningKey
from tessera.node.config import (
    ClientConfig,
    DatasetConfig,
    NodeConfig,
    PrivacyConfig,
    SecureAggregationConfig,
)
from tessera.node.ingest import ingest_dataset
from tessera.templates.model import Analyst, Mode, Template
from tessera.tls import TlsFiles, make_federation
from tessera.wire.v1 import common_pb2, node_pb2, node_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "templates"

HEADER = """CHILD,SEX,DOB,ETHNIC,UPN,MOTHER,MC_DOB
C1,1,01/06/2010,WBRI,,,
C2,2,15/01/2025,WBRI,,,
C3,1,2008-03-01,APKN,,,
C4,2,20/11/2014,WBRI,,,
C5,1,05/05/2019,BAFR,,,
"""
EPISODES = (
    "CHILD,DECOM,RNE,LS,CIN,PLACE,PLACE_PROVIDER,DEC,REC,REASON_PLACE_CHANGE,HOME_POST,PL_POST,URN\n"
    """C1,01/01/2024,S,C2,N1,U1,PR1,,,,,,
C2,01/02/2025,S,C2,N1,U3,PR1,,,,,,
C3,01/01/2023,S,V2,N4,K2,PR2,01/06/2024,E13,,,,
C3,01/06/2024,P,V2,N4,H5,PR2,,,,,,
C4,10/10/2024,S,C2,N1,P1,PR0,,,,,,
C5,01/01/2020,S,C2,N2,U1,PR1,01/01/2021,E11,,,,
"""
)
CHILDREN = """child_id,dob,sex,upn,nhs_number
K1,2010-06-01,1,,
K2,2015-02-01,2,,
K3,2024-12-01,1,,
"""
REFERRALS = """child_id,referral_date,referral_source,primary_need,nfa
K1,2025-05-01,1A,N1,false
K1,2025-06-01,1A,N1,false
K1,2025-07-01,1A,N1,false
K1,2025-08-01,1A,N1,false
K1,2025-09-01,1A,N1,false
K2,2025-05-03,2A,N4,true
K3,2025-06-03,5A,N2,false
"""


@dataclass
class Federation:
    root: Path
    certs: Any
    approvers: list[SigningKey]
    analyst: SigningKey
    outsider: SigningKey
    node_key: SigningKey
    # Per-node signing keys, for tests that need each node's own (default: node_key).
    node_keys: dict[str, SigningKey] = dataclasses.field(default_factory=dict)

    def key_of(self, organisation: str) -> SigningKey:
        return self.node_keys.get(organisation, self.node_key)

    def trust(self, organisations: Sequence[str]) -> dict[str, str]:
        """What an analyst's trust list says: each node's signing key id."""
        return {o: self.key_of(o).public.key_id for o in organisations}

    def write_roster(
        self,
        organisations: Sequence[str],
        *,
        signers: int = 2,
        keys: Mapping[str, str] | None = None,
        name: str = "roster.json",
    ) -> Path:
        """A federation roster of these nodes' keys (or `keys`, organisation -> key id,
        instead), signed by the first `signers` approvers, written to `name` under the
        federation's folder; its path."""
        keys = keys or {}
        entries = [
            roster.Entry(o, keys.get(o, self.key_of(o).public.key_id), o) for o in organisations
        ]
        doc = roster.make("test federation", entries, datetime.now(UTC))
        path = self.root / name
        roster.save(path, doc, [roster.sign(doc, k) for k in self.approvers[:signers]])
        return path

    def tls(self, name: str) -> TlsFiles:
        return TlsFiles.for_name(self.root / "certs", name)

    def channel(self, name: str, port: int) -> grpc.Channel:
        material = self.tls(name).load()
        return grpc.secure_channel(f"localhost:{port}", material.channel_credentials())

    def template(self, name: str, **access: Any) -> Template:
        """A reference template with this federation's analyst allowed."""
        t = templates.load_toml((EXAMPLES / f"{name}.toml").read_text())
        acc = dataclasses.replace(
            t.access, analysts=(Analyst("Test Analyst", self.analyst.public.key_id),), **access
        )
        return dataclasses.replace(t, access=acc)


def make(root: Path, *, node_names: Sequence[str] = ("Leeds",)) -> Federation:
    certs = make_federation(
        root / "certs",
        nodes=list(node_names),
        coordinator="coordinator",
        users=["operator", "stranger"],
    )
    return Federation(
        root=root,
        certs=certs,
        approvers=[SigningKey.generate() for _ in range(3)],
        analyst=SigningKey.generate(),
        outsider=SigningKey.generate(),
        node_key=SigningKey.generate(),
    )


def write_council_files(folder: Path) -> dict[str, dict[str, list[Path]]]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "header.csv": HEADER,
        "episodes.csv": EPISODES,
        "children.csv": CHILDREN,
        "referrals.csv": REFERRALS,
        "cin_episodes.csv": "child_id,start_date,end_date,primary_need\n",
        "cp_plans.csv": "child_id,start_date,end_date,initial_category\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return {
        "ssda903": {"header": [folder / "header.csv"], "episodes": [folder / "episodes.csv"]},
        "cin": {
            "children": [folder / "children.csv"],
            "referrals": [folder / "referrals.csv"],
            "cin_episodes": [folder / "cin_episodes.csv"],
            "cp_plans": [folder / "cp_plans.csv"],
        },
    }


def node_config(
    fed: Federation,
    name: str,
    *,
    budgets: Mapping[str, tuple[float | None, float | None]] | None = None,
    threshold: int = 2,
    privacy: PrivacyConfig | None = None,
    roster_path: Path | None = None,
) -> NodeConfig:
    """`roster_path` is the federation roster for secure aggregation (write_roster).
    `budgets` names the hosted datasets. Budgets are per accountant now: unless
    `privacy` is given, the node's lifetime cap is ρ = Σ ε²/2 + Σ ρ over `budgets`
    (what the old per-dataset figures allowed together), at most 1000."""
    base = fed.root / "nodes" / name
    key_path = base / "node.key"
    if not key_path.exists():
        fed.key_of(name).save(key_path)
    budgets = budgets or {"ssda903": (2.0, None), "cin": (None, 1.0)}
    tls = fed.tls(name)
    return NodeConfig(
        organisation=name,
        listen="127.0.0.1:0",
        state_dir=base / "state",
        data_dir=base / "data",
        signing_key=key_path,
        tls=TlsConfig(tls.cert, tls.key, tls.ca),
        approvers=ApproversConfig(
            threshold,
            tuple(
                TrustedApprover(f"Approver {i}", k.public.key_id)
                for i, k in enumerate(fed.approvers)
            ),
        ),
        clients=(ClientConfig("coordinator", "coordinator"), ClientConfig("operator", "operator")),
        datasets=MappingProxyType({ds: DatasetConfig() for ds in budgets}),
        privacy=privacy
        or PrivacyConfig(
            delta=1e-6,
            lifetime_rho=min(
                sum((e or 0.0) ** 2 / 2 + (r or 0.0) for e, r in budgets.values()), 1000.0
            ),
        ),
        secure_aggregation=SecureAggregationConfig(roster_path),
    )


def ingest_council(fed: Federation, cfg: NodeConfig) -> None:
    sources = write_council_files(fed.root / "sources" / cfg.organisation)
    now = datetime(2026, 4, 1, tzinfo=UTC)
    for ds_name in cfg.datasets:
        ds = schemas.dataset(ds_name)
        assert ds is not None
        ingest_dataset(ds, sources[ds_name], cfg.data_dir, now)


def sign_template(t: Template, signers: Sequence[SigningKey]) -> common_pb2.SignedTemplate:
    digest = templates.digest(t)
    return common_pb2.SignedTemplate(
        canonical=templates.encode(t),
        approvals=[
            common_pb2.Approval(approver_key=a.approver_key, signature=a.signature)
            for a in (approvals.sign(digest, k) for k in signers)
        ],
    )


def execute_request(
    fed: Federation,
    signed_template: common_pb2.SignedTemplate,
    params: Mapping[str, Any],
    *,
    audience: Sequence[str] = ("Leeds",),
    mode: Mode = Mode.COMBINED,
    analyst: SigningKey | None = None,
    now: datetime | None = None,
    lifetime: timedelta = timedelta(minutes=10),
    digest: str | None = None,
) -> node_pb2.ExecuteRequest:
    analyst = analyst or fed.analyst
    req = requests.new_request(
        template_digest=digest or templates.digest_of_bytes(signed_template.canonical),
        params=params,
        mode=mode,
        audience=audience,
        analyst_key=analyst.public.key_id,
        now=now or datetime.now(UTC),
        lifetime=lifetime,
    )
    signed = requests.sign(req, analyst)
    return node_pb2.ExecuteRequest(
        template=signed_template,
        request=common_pb2.SignedRequest(canonical=signed.body, signature=signed.signature),
    )


def node_stub(fed: Federation, port: int, as_name: str = "coordinator") -> Any:
    return node_pb2_grpc.NodeServiceStub(fed.channel(as_name, port))
