"""Real node and coordinator processes on loopback, with mutual TLS, for the benchmarks.

Certificates, keys and configs are laid out like `tessera demo` does; processes are
started with the demo's process manager and found by their ready line.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w

from tessera import roster, templates
from tessera.demo.drills import execute_request, signed_template
from tessera.demo.processes import Child, Processes
from tessera.keys import SigningKey
from tessera.node import secret, vault
from tessera.templates.model import Analyst, Template
from tessera.tls import TlsFiles, make_federation
from tessera.wire.v1 import common_pb2, node_pb2

TEMPLATES = Path(__file__).resolve().parent / "templates"
HIST = "ed-attendances-by-age-and-category"
MEAN = "ed-mean-age-by-category"
COORDINATOR = "coordinator"
APPROVERS = ("approver-1", "approver-2", "approver-3")
# Each node's lifetime cap (zCDP rho) for the benchmark: the most a node allows.
BUDGET_RHO = 1000.0
# The bench's synthetic versions (bench/data.py) are sealed like any node's, and its
# node processes inherit this environment: one fresh data key per bench run, unless
# the caller gave one.
if not (os.environ.get(vault.ENV_KEY_FILE) or os.environ.get(vault.ENV_KEY)):
    os.environ[vault.ENV_KEY] = vault.DataKey.generate().to_text()


@dataclass(frozen=True)
class NodeSpec:
    slug: str  # certificate common name
    organisation: str
    data_dir: Path


class Questions:
    """Distinct parameter values for the benchmark templates: question k asks about a
    different period from every other k, so each one is computed afresh."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            k = self._next
            self._next += 1
        return k

    @staticmethod
    def params(k: int) -> dict[str, str]:
        start = date(2016, 1, 1) + timedelta(days=k % 1500)
        end = date(2025, 12, 31) - timedelta(days=k // 1500)
        return {"period_start": start.isoformat(), "period_end": end.isoformat()}

    def next(self) -> dict[str, str]:
        return self.params(self.take())


def load_template(name: str) -> Template:
    return templates.load_toml((TEMPLATES / f"{name}.toml").read_text(encoding="utf-8"))


class Cluster:
    """Stops every process it started when closed."""

    def __init__(self, root: Path, node_slugs: Sequence[str], analysts: int = 8) -> None:
        self.root = root
        self.analyst_names = [f"analyst-{i + 1}" for i in range(analysts)]
        make_federation(
            root / "certs",
            nodes=list(node_slugs),
            coordinator=COORDINATOR,
            users=[*APPROVERS, *self.analyst_names],
        )
        self.approvers = {n: SigningKey.generate() for n in APPROVERS}
        self.analysts = {n: SigningKey.generate() for n in self.analyst_names}
        self.procs = Processes(root / "logs")
        # Each node's secret (made here, before the node starts, so the harness can
        # recompute a node's exact answers for the accuracy figures).
        self.secrets: dict[str, bytes] = {}
        # Every node started so far, in the federation roster the approvers sign (the
        # nodes take their peers' keys for secure aggregation from it).
        self.roster_entries: dict[str, roster.Entry] = {}

    # -- parties -------------------------------------------------------------------

    def tls(self, name: str) -> TlsFiles:
        return TlsFiles.for_name(self.root / "certs", name)

    @property
    def analyst(self) -> SigningKey:
        return self.analysts[self.analyst_names[0]]

    def template(self, name: str) -> Template:
        """A benchmark template that every benchmark analyst may ask."""
        t = load_template(name)
        people = tuple(Analyst(n, k.public.key_id) for n, k in self.analysts.items())
        return dataclasses.replace(t, access=dataclasses.replace(t.access, analysts=people))

    def signed(self, t: Template) -> common_pb2.SignedTemplate:
        """Signed by two of the three approvers, as the nodes require."""
        return signed_template(t, [self.approvers[n] for n in APPROVERS[:2]])

    def request(
        self,
        st: common_pb2.SignedTemplate,
        params: dict[str, str],
        audience: Sequence[str],
        analyst: SigningKey | None = None,
    ) -> node_pb2.ExecuteRequest:
        return execute_request(st, params, analyst or self.analyst, audience)

    # -- nodes ---------------------------------------------------------------------

    def _node_config(self, spec: NodeSpec) -> Path:
        base = self.root / "nodes" / spec.slug
        base.mkdir(parents=True, exist_ok=True)
        node_key = SigningKey.generate()
        node_key.save(base / "node.key")
        entry = roster.Entry(spec.organisation, node_key.public.key_id, spec.slug)
        self.roster_entries[spec.organisation] = entry
        self.secrets[spec.slug] = secret.load_or_create(base / "state")
        tls = self.tls(spec.slug)
        cfg: dict[str, Any] = {
            "organisation": spec.organisation,
            "listen": "127.0.0.1:0",
            "state_dir": str(base / "state"),
            "data_dir": str(spec.data_dir),
            "signing_key": str(base / "node.key"),
            "tls": {"cert": str(tls.cert), "key": str(tls.key), "ca": str(tls.ca)},
            "approvers": {
                "threshold": 2,
                "trusted": [{"name": n, "key": k.public.key_id} for n, k in self.approvers.items()],
            },
            "clients": [{"identity": COORDINATOR, "role": "coordinator"}],
            "datasets": {"health": {}},
            # The most a node allows (rho 1000: two thousand epsilon 1 answers).
            "privacy": {"delta": 1e-6, "lifetime_rho": BUDGET_RHO},
            "secure_aggregation": {"roster": str(self.root / "roster.json")},
        }
        path = base / "node.toml"
        path.write_text(tomli_w.dumps(cfg))
        return path

    def start_nodes(self, specs: Sequence[NodeSpec]) -> list[Child]:
        """Start the nodes in parallel; each is ready when it prints its port."""
        configs = [self._node_config(s) for s in specs]
        doc = roster.make("bench", list(self.roster_entries.values()), datetime.now(UTC))
        signers = [self.approvers[n] for n in APPROVERS[:2]]
        roster.save(self.root / "roster.json", doc, [roster.sign(doc, k) for k in signers])
        with ThreadPoolExecutor(max_workers=max(len(specs), 1)) as pool:
            return list(
                pool.map(
                    lambda sc: self.procs.start(
                        sc[0].slug, "tessera.node.main", ["--config", str(sc[1])]
                    ),
                    zip(specs, configs, strict=True),
                )
            )

    def stop(self, child: Child) -> None:
        """Stop one process (SIGTERM, then SIGKILL)."""
        child.proc.terminate()
        try:
            child.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(timeout=10)
        if child.proc.stdout is not None:
            child.proc.stdout.close()
        child.log.close()
        self.procs.children.remove(child)

    # -- coordinator ---------------------------------------------------------------

    def start_coordinator(self, nodes: Sequence[tuple[NodeSpec, int]]) -> Child:
        base = self.root / COORDINATOR
        base.mkdir(parents=True, exist_ok=True)
        SigningKey.generate().save(base / "coordinator.key")
        tls = self.tls(COORDINATOR)
        people = [
            {"identity": n, "name": n, "role": "approver", "key": k.public.key_id}
            for n, k in self.approvers.items()
        ] + [
            {"identity": n, "name": n, "role": "analyst", "key": k.public.key_id}
            for n, k in self.analysts.items()
        ]
        cfg: dict[str, Any] = {
            "organisation": "Benchmark hub",
            "listen": "127.0.0.1:0",
            "state_dir": str(base / "state"),
            "signing_key": str(base / "coordinator.key"),
            "deadline_seconds": 120.0,
            "tls": {"cert": str(tls.cert), "key": str(tls.key), "ca": str(tls.ca)},
            "approvers": {
                "threshold": 2,
                "trusted": [{"name": n, "key": k.public.key_id} for n, k in self.approvers.items()],
            },
            "people": people,
            "nodes": [
                {
                    "organisation": s.organisation,
                    "address": f"localhost:{port}",
                    "identity": s.slug,
                    "datasets": ["health"],
                }
                for s, port in nodes
            ],
        }
        path = base / "coordinator.toml"
        path.write_text(tomli_w.dumps(cfg))
        return self.procs.start(COORDINATOR, "tessera.coordinator.main", ["--config", str(path)])

    def close(self) -> None:
        self.procs.stop_all()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
