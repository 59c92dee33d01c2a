"""Wiring for a node process: build everything from config in main(argv, environ)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tessera import serving
from tessera.clock import Clock, SystemClock
from tessera.keys import SigningKey
from tessera.node import config as node_config
from tessera.node import secret
from tessera.node.catalog import DatasetCatalog
from tessera.node.ledger import Ledger
from tessera.node.service import NodeService
from tessera.node.servicer import NodeServicer
from tessera.tls import TlsFiles
from tessera.wire.v1 import node_pb2, node_pb2_grpc

SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name


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
    key = SigningKey.load(cfg.signing_key)
    catalog = DatasetCatalog(cfg.data_dir)
    ledger = Ledger(cfg.state_dir / "ledger.sqlite", key, clock)
    return NodeService(cfg, catalog, ledger, key, clock, secret.load_or_create(cfg.state_dir))


def start(cfg: node_config.NodeConfig, clock: Clock | None = None) -> RunningNode:
    service = build_service(cfg, clock or SystemClock())
    tls = TlsFiles(cfg.tls.cert, cfg.tls.key, cfg.tls.ca).load()
    servicer = NodeServicer(service)
    running = serving.serve(
        address=cfg.listen,
        tls=tls,
        register=lambda s: node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, s),
        service_names=[SERVICE_NAME],
        max_message_bytes=cfg.max_message_bytes,
        max_workers=cfg.max_workers,
    )
    return RunningNode(service, running)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera node serve")
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    return serve_forever(node_config.load(args.config))


def serve_forever(cfg: node_config.NodeConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    node = start(cfg)
    # Port 0 picks a free port: the ready line says which.
    return serving.wait_for_signal({"organisation": cfg.organisation, "port": node.port}, node.stop)


if __name__ == "__main__":
    sys.exit(main())
