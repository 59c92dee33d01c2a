"""A small real region for tests: council nodes and a coordinator, in process, over
mutual TLS with real certificates, and clients for the analyst and the approvers."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.client import Client
from tessera.config import ApproversConfig, TlsConfig, TrustedApprover
from tessera.coordinator import config as cc
from tessera.coordinator import main as coordinator_main
from tessera.keys import SigningKey
from tessera.tls import make_certificate
from tests.support import federation as fedlib

COUNCILS = ("Bradford", "Leeds", "Wakefield")
APPROVERS = ("approver0", "approver1", "approver2")
ANALYST = "analyst"
BUDGETS = {"ssda903": (20.0, None), "cin": (None, 5.0)}


def issue_user_certs(fed: fedlib.Federation, names: Sequence[str]) -> None:
    """Client certificates for people, signed by the federation's CA."""
    for name in names:
        make_certificate(fed.certs.ca, name, fed.root / "certs")


def coordinator_config(
    fed: fedlib.Federation,
    node_ports: dict[str, int | str],
    *,
    deadline_seconds: float = 5.0,
    threshold: int = 2,
) -> cc.CoordinatorConfig:
    """Nodes at localhost:<port> (or a full host:port); the analyst and three
    approvers as people; k = `threshold` of the federation's approvers."""
    base = fed.root / "coordinator"
    key_path = base / "coordinator.key"
    if not key_path.exists():
        SigningKey.generate().save(key_path)
    tls = fed.tls("coordinator")
    people = [cc.Person(ANALYST, "Test Analyst", "analyst", fed.analyst.public.key_id)]
    people += [
        cc.Person(name, f"Approver {i}", "approver", fed.approvers[i].public.key_id)
        for i, name in enumerate(APPROVERS)
    ]
    nodes = tuple(
        cc.NodeConfig(
            org, port if isinstance(port, str) else f"localhost:{port}", org, ("ssda903", "cin")
        )
        for org, port in node_ports.items()
    )
    return cc.CoordinatorConfig(
        organisation="West Yorkshire test region",
        listen="127.0.0.1:0",
        state_dir=base / "state",
        signing_key=key_path,
        tls=TlsConfig(tls.cert, tls.key, tls.ca),
        approvers=ApproversConfig(
            threshold,
            tuple(
                TrustedApprover(f"Approver {i}", k.public.key_id)
                for i, k in enumerate(fed.approvers)
            ),
        ),
        people=tuple(people),
        nodes=nodes,
        deadline_seconds=deadline_seconds,
    )


@dataclass
class Region:
    fed: fedlib.Federation
    nodes: dict[str, Any]
    cfg: cc.CoordinatorConfig
    coordinator: Any = None
    clients: list[Client] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"localhost:{self.coordinator.port}"

    def client(self, name: str, key: SigningKey | None = None) -> Client:
        c = Client(self.address, self.fed.tls(name), key, timeout=30)
        self.clients.append(c)
        return c

    def analyst(self) -> Client:
        return self.client(ANALYST, self.fed.analyst)

    def approver(self, i: int) -> Client:
        return self.client(APPROVERS[i], self.fed.approvers[i])

    def restart_coordinator(self) -> None:
        self.coordinator.stop(0)
        self.coordinator = coordinator_main.start(self.cfg)

    def stop_node(self, organisation: str) -> None:
        self.nodes.pop(organisation).stop(0)

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        if self.coordinator is not None:
            self.coordinator.stop(0)
        for n in self.nodes.values():
            n.stop(0)


def start_region(
    root: Path,
    councils: Sequence[str] = COUNCILS,
    *,
    extra_nodes: dict[str, str] | None = None,
    distinct_node_keys: bool = False,
    with_roster: bool = True,
    **coordinator_options: Any,
) -> Region:
    """Start the councils' nodes, then a coordinator routing to them (and to
    `extra_nodes`, organisation -> host:port, which tests use for dead or hung nodes).
    With `with_roster`, every node gets the councils' federation roster (signed by two
    approvers) for secure aggregation."""
    from tessera.node.main import start

    fed = fedlib.make(root, node_names=list(councils))
    if distinct_node_keys:
        fed.node_keys.update({org: SigningKey.generate() for org in councils})
    issue_user_certs(fed, [ANALYST, *APPROVERS])
    nodes: dict[str, Any] = {}
    try:
        roster_path = fed.write_roster(councils) if with_roster else None
        cfgs = [
            fedlib.node_config(fed, org, budgets=BUDGETS, roster_path=roster_path)
            for org in councils
        ]
        # Every council gets the same small files: ingest once, copy the versions.
        fedlib.ingest_council(fed, cfgs[0])
        for node_cfg in cfgs[1:]:
            shutil.copytree(cfgs[0].data_dir, node_cfg.data_dir)
        for node_cfg in cfgs:
            nodes[node_cfg.organisation] = start(node_cfg)
        ports: dict[str, int | str] = {org: n.port for org, n in nodes.items()}
        ports.update(extra_nodes or {})
        cfg = coordinator_config(fed, ports, **coordinator_options)
        region = Region(fed, nodes, cfg)
        region.coordinator = coordinator_main.start(cfg)
    except BaseException:
        for n in nodes.values():
            n.stop(0)
        raise
    return region


def published(region: Region, template_name: str, *, version: int = 1, **access: Any) -> str:
    """Submit a reference template (with the test analyst allowed, at `version`) and
    have two approvers sign it. Returns its digest."""
    t = dataclasses.replace(region.fed.template(template_name, **access), version=version)
    info = region.analyst().submit_template(t)
    for i in (0, 1):
        region.approver(i).approve(info.digest)
    return info.digest
