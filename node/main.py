"""Wiring for a node process: build everything from config in main(argv, environ)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily

from tessera import observability, serving, startup
from tessera.clock import Clock, SystemClock
from tessera.keys import SigningKey
from tessera.node import config as node_config
from tessera.node import rekey, rollback, secret, vault
from tessera.node.catalog import DatasetCatalog
from tessera.node.ledger import Ledger, LedgerSchemaError
from tessera.node.secagg_node import load_roster
from tessera.node.service import NodeService
from tessera.node.servicer import NodeServicer
from tessera.tls import TlsFiles, peer_identity
from tessera.wire.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger("tessera.node")
SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
# Start-up refusals already phrased for the operator: short message, exit 2.
startup.EXPLAINED.append(rollback.RollbackError)
startup.EXPLAINED.append(vault.VaultError)
startup.EXPLAINED.append(LedgerSchemaError)


@dataclass
class RunningNode:
    service: NodeService
    running: serving.Running

    @property
    def port(self) -> int:
        return self.running.port

    def stop(self, grace: float = 2.0) -> None:
        self.running.stop(grace)
        self.service.ledger.close()
        self.service.catalog.close()


def build_service(cfg: node_config.NodeConfig, clock: Clock) -> NodeService:
    startup.require_files("node config", {"signing_key": cfg.signing_key})
    key = SigningKey.load(cfg.signing_key)
    # Versions and ledger fields are encrypted under the data key (node/vault.py).
    data_key = vault.load_key(cfg.encryption, os.environ, "node config")
    rekey.check_key(cfg.data_dir, cfg.state_dir / "ledger.sqlite", data_key)
    vault.private_dir(cfg.state_dir)
    vault.private_dir(cfg.data_dir)
    catalog = DatasetCatalog(cfg.data_dir, data_key)
    ledger_path = cfg.state_dir / "ledger.sqlite"
    # A state folder restored from an older backup would roll spend back: refuse it.
    rollback.check_not_rolled_back(cfg, ledger_path)
    ledger = Ledger(
        ledger_path,
        key,
        clock,
        accountant_of=cfg.accountant_of,
        period=cfg.privacy.period,
        on_paid=rollback.watermark_for(cfg, key).advance,
        sealer=vault.LedgerSealer(data_key),
    )
    return NodeService(cfg, catalog, ledger, key, clock, secret.load_or_create(cfg.state_dir))


def start(
    cfg: node_config.NodeConfig,
    clock: Clock | None = None,
    ops: observability.OpsOptions | None = None,
    where: str = "node config",
) -> RunningNode:
    tls_files = TlsFiles(cfg.tls.cert, cfg.tls.key, cfg.tls.ca)
    tls = startup.load_tls(where, tls_files.cert, tls_files.key, tls_files.ca)
    for warning in startup.expiry_warnings({"tls.cert": cfg.tls.cert, "tls.ca": cfg.tls.ca}):
        log.warning(warning, extra={"event": "certificate_expiry"})
    startup.require_files(where, {"signing_key": cfg.signing_key})
    load_roster(cfg, where)  # a bad federation roster stops the start, naming the key
    service = build_service(cfg, clock or SystemClock())
    servicer = NodeServicer(service)
    metrics = observability.Metrics("node")
    metrics.add_gauges(lambda: node_gauges(service))
    try:
        running = serving.serve(
            address=cfg.listen,
            tls=tls,
            register=lambda s: node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, s),
            service_names=[SERVICE_NAME],
            max_message_bytes=cfg.max_message_bytes,
            max_workers=cfg.max_workers,
            reload_from=tls_files,
            ops=ops,
            metrics=metrics,
            on_undecodable=lambda method, context: service.audit_undecodable(
                peer_identity(context), method
            ),
        )
    except BaseException as e:
        service.ledger.close()
        service.catalog.close()
        if isinstance(e, observability.PortError):
            raise startup.StartupError(f"{where}: {e}") from None
        raise
    # The engine's frames in the background: the first query need not build them.
    service.catalog.warm(cfg.datasets, service.secret)
    return RunningNode(service, running)


def node_gauges(service: NodeService) -> list[GaugeMetricFamily]:
    """Budget left per accountant and measure, and the audit log's last sequence number,
    read from the node service when Prometheus scrapes. Datasets that share an
    accountant share its one figure."""
    left = GaugeMetricFamily(
        "tessera_budget_remaining",
        "Privacy budget not yet spent, per accountant and measure (the node's own units)",
        labels=["accountant", "measure"],
    )
    figures: dict[tuple[str, str], float] = {}
    for d in service.status():
        accountant = str(getattr(d, "accountant", "") or d.name)
        for kind, total in d.budget_total.items():
            figures[(accountant, kind)] = max(total - d.budget_spent.get(kind, 0.0), 0.0)
    for (accountant, kind), remaining in sorted(figures.items()):
        left.add_metric([accountant, kind], remaining)
    head = GaugeMetricFamily("tessera_audit_head_seq", "Sequence number of the last audit entry")
    last = service.ledger.audit_log.last()
    head.add_metric([], float(last.seq if last is not None else 0))
    return [left, head]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    return startup.serve_main("tessera node serve", argv, node_config.load, serve_forever)


def serve_forever(
    cfg: node_config.NodeConfig,
    ops: observability.OpsOptions | None = None,
    where: str = "node config",
) -> int:
    ops = ops or observability.OpsOptions()
    observability.configure_logging(ops)
    node = start(cfg, ops=ops, where=where)
    ready = node.running.ready(organisation=cfg.organisation)
    return serving.wait_for_signal(ready, node.stop)


if __name__ == "__main__":
    sys.exit(main())
