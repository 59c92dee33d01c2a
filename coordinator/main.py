"""Wiring for a coordinator process: build everything from config in main(argv, environ)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tessera import observability, serving, startup
from tessera.clock import Clock, SystemClock
from tessera.coordinator import config as coordinator_config
from tessera.coordinator.fanout import FanOut
from tessera.coordinator.queries import Queries
from tessera.coordinator.registry import Registry
from tessera.coordinator.service import CoordinatorService
from tessera.coordinator.servicer import CoordinatorServicer
from tessera.coordinator.store import Store
from tessera.keys import SigningKey
from tessera.tls import TlsFiles, peer_identity
from tessera.wire.v1 import coordinator_pb2, coordinator_pb2_grpc

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
log = logging.getLogger("tessera.coordinator")


@dataclass
class RunningCoordinator:
    service: CoordinatorService
    running: serving.Running

    @property
    def port(self) -> int:
        return self.running.port

    def stop(self, grace: float = 2.0) -> None:
        try:
            self.running.stop(grace)
        finally:
            self.service.fanout.close()
            self.service.store.close()


def start(
    cfg: coordinator_config.CoordinatorConfig,
    clock: Clock | None = None,
    ops: observability.OpsOptions | None = None,
    where: str = "coordinator config",
) -> RunningCoordinator:
    clock = clock or SystemClock()
    tls = startup.load_tls(where, cfg.tls.cert, cfg.tls.key, cfg.tls.ca)
    for warning in startup.expiry_warnings({"tls.cert": cfg.tls.cert, "tls.ca": cfg.tls.ca}):
        log.warning(warning, extra={"event": "certificate_expiry"})
    startup.require_files(where, {"signing_key": cfg.signing_key})
    key = SigningKey.load(cfg.signing_key)
    store = Store(
        cfg.state_dir / "coordinator.sqlite", key, clock, threshold=cfg.approvers.threshold
    )
    fanout = FanOut(tls, cfg.max_message_bytes)
    try:
        registry = Registry(cfg.nodes, fanout, cfg.deadline_seconds, clock)
        service = CoordinatorService(cfg, store, registry, fanout, clock)
        service.reconcile()
        # Best effort: a node that is down now is found again on the next ListNodes.
        registry.refresh()
        servicer = CoordinatorServicer(service, Queries(service))
        running = serving.serve(
            address=cfg.listen,
            tls=tls,
            register=lambda s: coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(
                servicer, s
            ),
            service_names=[SERVICE_NAME],
            max_message_bytes=cfg.max_message_bytes,
            max_workers=cfg.max_workers,
            reload_from=TlsFiles(cfg.tls.cert, cfg.tls.key, cfg.tls.ca),
            ops=ops,
            metrics=observability.Metrics("coordinator"),
            # RunQuery's result event is its last word: a client may stop reading there.
            final_message=_is_result,
            on_undecodable=lambda method, context: service.audit_best_effort(
                service.audit_body(
                    peer_identity(context),
                    method.rsplit("/", 1)[-1],
                    "INVALID_ARGUMENT",
                    serving.UNDECODABLE_MESSAGE,
                )
            ),
        )
    except BaseException as e:
        fanout.close()
        store.close()
        if isinstance(e, observability.PortError):
            raise startup.StartupError(f"{where}: {e}") from None
        raise
    return RunningCoordinator(service, running)


def _is_result(message: object) -> bool:
    return isinstance(message, coordinator_pb2.QueryEvent) and message.HasField("result")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    return startup.serve_main(
        "tessera coordinator serve", argv, coordinator_config.load, serve_forever
    )


def serve_forever(
    cfg: coordinator_config.CoordinatorConfig,
    ops: observability.OpsOptions | None = None,
    where: str = "coordinator config",
) -> int:
    ops = ops or observability.OpsOptions()
    observability.configure_logging(ops)
    coordinator = start(cfg, ops=ops, where=where)
    return serving.wait_for_signal(coordinator.running.ready(), coordinator.stop)


if __name__ == "__main__":
    sys.exit(main())
