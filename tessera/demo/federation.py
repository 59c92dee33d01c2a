"""Laying out a whole local federation in one folder: certificates, keys,
synthetic data ingested per node, and node and coordinator configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from tessera import roster, schemas
from tessera.keys import SigningKey
from tessera.node import vault
from tessera.synth import RegionManifest, generate_region
from tessera.tls import TlsFiles, make_federation

APPROVERS = ("approver-1", "approver-2", "approver-3")
ANALYST = "analyst"
COORDINATOR = "coordinator"
OPERATOR = "operator"
THRESHOLD = 2
DATA_KEY = "data.key"

# Each node's privacy policy, in zCDP rho per accountant (one per population: a
# council's ssda903, cin and education data share the children's accountant). The
# police cap is small on purpose: after the overlap query (rho 1: epsilon 1 for the
# counter's view and 1 for its not-linkable figure) the demo's drill spends it down to
# show a refusal (two of its epsilon 1 questions, rho 0.5 each, fill it).
PRIVACY: dict[str, Any] = {
    "delta": 1e-6,
    "lifetime_rho": 20.0,
    "period": "financial_year",
    "period_rho": 10.0,
}
POLICE_PRIVACY: dict[str, Any] = {"delta": 1e-6, "lifetime_rho": 2.0}


def _privacy_of(datasets: Any) -> dict[str, Any]:
    return POLICE_PRIVACY if any(d.name == "police" for d in datasets) else PRIVACY


@dataclass
class NodeSite:
    slug: str
    organisation: str
    datasets: list[str]
    config_path: Path
    data_dir: Path
    state_dir: Path
    port: int | None = None


@dataclass
class Layout:
    root: Path
    region: RegionManifest
    nodes: list[NodeSite]
    coordinator_config: Path
    keys: dict[str, SigningKey] = field(default_factory=dict)

    def tls(self, name: str) -> TlsFiles:
        return TlsFiles.for_name(self.root / "certs", name)

    def node(self, organisation: str) -> NodeSite:
        for n in self.nodes:
            if n.organisation == organisation:
                return n
        raise KeyError(organisation)


def _key(root: Path, name: str) -> SigningKey:
    key = SigningKey.generate()
    key.save(root / "keys" / f"{name}.key")
    return key


def build(root: Path, *, scale: float, seed: int) -> Layout:
    # SSDA903 in the messy form councils really hold (stacked yearly returns, missing
    # headers, spreadsheet values): the demo's ingest reconciles it end to end.
    region = generate_region(root / "region", scale=scale, seed=seed, messy=True)
    slugs = [o.slug for o in region.organisations]
    make_federation(
        root / "certs",
        nodes=slugs,
        coordinator=COORDINATOR,
        users=[*APPROVERS, ANALYST, OPERATOR],
    )
    keys = {name: _key(root, name) for name in (*APPROVERS, ANALYST)}
    trusted = [{"name": n, "key": keys[n].public.key_id} for n in APPROVERS]
    nodes = []
    # The federation roster (node keys by organisation), signed below by two of the
    # three approvers: each node takes its peers' keys for secure aggregation from it.
    roster_path = root / "roster.json"
    entries: list[roster.Entry] = []
    for org in region.organisations:
        base = root / "nodes" / org.slug
        site = NodeSite(
            org.slug,
            org.name,
            [d.name for d in org.datasets],
            base / "node.toml",
            base / "data",
            base / "state",
        )
        node_key = SigningKey.generate()
        node_key.save(base / "node.key")
        entries.append(roster.Entry(org.name, node_key.public.key_id, org.slug))
        tls = TlsFiles.for_name(root / "certs", org.slug)
        cfg: dict[str, Any] = {
            "organisation": org.name,
            "listen": "127.0.0.1:0",
            "state_dir": str(site.state_dir),
            "data_dir": str(site.data_dir),
            "signing_key": str(base / "node.key"),
            "tls": {"cert": str(tls.cert), "key": str(tls.key), "ca": str(tls.ca)},
            "approvers": {"threshold": THRESHOLD, "trusted": trusted},
            "clients": [
                {"identity": COORDINATOR, "role": "coordinator"},
                {"identity": OPERATOR, "role": "operator"},
            ],
            "privacy": _privacy_of(org.datasets),
            "datasets": {
                d.name: {
                    "sources": {t: [str(root / "region" / f.path)] for t, f in d.tables.items()},
                }
                for d in org.datasets
            },
        }
        base.mkdir(parents=True, exist_ok=True)
        # The node's data key (encryption at rest), beside its config, outside its folders.
        vault.write_key_file(base / DATA_KEY, vault.DataKey.generate())
        cfg["encryption"] = {"key_file": str(base / DATA_KEY)}
        cfg["secure_aggregation"] = {"roster": str(roster_path)}
        site.config_path.write_text(tomli_w.dumps(cfg))
        nodes.append(site)
    doc = roster.make("demo federation", entries, datetime.now(UTC))
    roster.save(roster_path, doc, [roster.sign(doc, keys[n]) for n in APPROVERS[:THRESHOLD]])
    return Layout(root, region, nodes, root / "coordinator" / "coordinator.toml", keys)


def ingest_all(layout: Layout) -> dict[str, int]:
    """Load each node's synthetic files as its first dataset version. Returns rows
    rejected per organisation (rows the schema refuses, such as a missing NHS number)."""
    from tessera.node.ingest import (
        ingest_dataset,
    )  # the node's own ingest, run as the operator would

    now = datetime.now(UTC)
    rejected: dict[str, int] = {}
    region_dir = layout.root / "region"
    for site in layout.nodes:
        org = layout.region.organisation(site.slug)
        total = 0
        for d in org.datasets:
            ds = schemas.dataset(d.name)
            assert ds is not None
            files = {t: [region_dir / f.path] for t, f in d.tables.items()}
            key = vault.load_key(
                vault.EncryptionConfig(key_file=site.config_path.parent / DATA_KEY),
                {},
                str(site.config_path),
            )
            with vault.using_key(key):
                report = ingest_dataset(ds, files, site.data_dir, now)
            total += report.rows_rejected
        rejected[site.organisation] = total
    return rejected


def write_coordinator_config(layout: Layout, deadline_seconds: float) -> None:
    """The coordinator's config, once the nodes' ports are known."""
    root = layout.root
    tls = layout.tls(COORDINATOR)
    key_path = root / "coordinator" / "coordinator.key"
    SigningKey.generate().save(key_path)
    people = [
        {"identity": n, "name": n, "role": "approver", "key": layout.keys[n].public.key_id}
        for n in APPROVERS
    ]
    people.append(
        {
            "identity": ANALYST,
            "name": "Regional analyst",
            "role": "analyst",
            "key": layout.keys[ANALYST].public.key_id,
        }
    )
    cfg: dict[str, Any] = {
        "organisation": "West Yorkshire analytics hub",
        "listen": "127.0.0.1:0",
        "state_dir": str(root / "coordinator" / "state"),
        "signing_key": str(key_path),
        "deadline_seconds": deadline_seconds,
        "tls": {"cert": str(tls.cert), "key": str(tls.key), "ca": str(tls.ca)},
        "approvers": {
            "threshold": THRESHOLD,
            "trusted": [{"name": n, "key": layout.keys[n].public.key_id} for n in APPROVERS],
        },
        "people": people,
        "nodes": [
            {
                "organisation": s.organisation,
                "address": f"localhost:{s.port}",
                "identity": s.slug,
                "datasets": s.datasets,
            }
            for s in layout.nodes
        ],
    }
    layout.coordinator_config.parent.mkdir(parents=True, exist_ok=True)
    layout.coordinator_config.write_text(tomli_w.dumps(cfg))
