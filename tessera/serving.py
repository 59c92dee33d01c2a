"""Building a gRPC server the way every Tessera server runs: mutual TLS only,
message size limits, standard health checking, reflection (v1 and v1alpha), one log
line and one metric per call, and certificates reloaded when their files change."""

from __future__ import annotations

import json
import logging
import signal
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from tessera import observability
from tessera.errors import Refusal
from tessera.observability import Metrics, Ops, OpsOptions, PortError
from tessera.tls import TlsFiles, TlsMaterial

# grpcio-reflection serves only grpc.reflection.v1alpha. The v1 service is the same
# protocol under another package name (identical messages and field numbers), so the
# same servicer answers both, and clients that speak only v1 work too.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"

log = logging.getLogger("tessera.serving")
R = TypeVar("R")


@dataclass
class Running:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    metrics: Metrics
    ops: Ops

    @property
    def metrics_port(self) -> int | None:
        return self.ops.metrics_port

    def ready(self, **fields: object) -> dict[str, object]:
        """The ready line's fields: `fields`, the port, and the metrics and health
        ports when they are served (port 0 picks a free port: the line says which)."""
        out: dict[str, object] = {**fields, "port": self.port}
        if self.metrics_port is not None:
            out["metrics_port"] = self.metrics_port
        if self.health_port is not None:
            out["health_port"] = self.health_port
        return out

    @property
    def health_port(self) -> int | None:
        return self.ops.health_port

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        try:
            self.server.stop(grace).wait()
        finally:
            self.ops.stop()


def serve(
    *,
    address: str,
    tls: TlsMaterial,
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    max_message_bytes: int,
    max_workers: int = 16,
    reload_from: TlsFiles | None = None,
    ops: OpsOptions | None = None,
    metrics: Metrics | None = None,
    on_undecodable: Callable[[str, Any], None] | None = None,
    final_message: Callable[[Any], bool] | None = None,
) -> Running:
    """Listen on `address` (host:port; port 0 picks a free one) with mutual TLS.

    A port another process holds is an error (SO_REUSEPORT is off), as is an
    address that is not HOST:PORT with a port from 0 to 65535. With `reload_from`,
    each new connection first checks the certificate files' modification times and
    uses renewed files without a restart (a broken renewal is logged and ignored)."""
    try:
        observability.split_address(address)
    except ValueError as e:
        raise PortError(f"listen: {e}") from None
    metrics = metrics or Metrics(service_names[0] if service_names else "server")
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_metadata_size", 16 * 1024),
        # grpc's default lets a second server bind a port that one already serves.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=options,
        interceptors=[
            observability.Observe(metrics, final_message),
            RefuseUndecodable(on_undecodable),
        ],
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1)
    reflection.enable_server_reflection(names, server)
    _add_reflection_v1(server, names)
    credentials = tls.server_credentials() if reload_from is None else _reloading(tls, reload_from)
    port = observability.bind_port(server, address, credentials)
    server.start()
    running_ops = Ops()
    try:
        running_ops.start(ops or OpsOptions(), metrics, health_servicer)
    except BaseException:
        server.stop(0).wait()
        running_ops.stop()
        raise
    for name in ("", *service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Running(server, port, health_servicer, metrics, running_ops)


def _add_reflection_v1(server: grpc.Server, names: Sequence[str]) -> None:
    servicer = reflection.ReflectionServicer(names)
    handler = grpc.method_handlers_generic_handler(
        REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))


def _reloading(initial: TlsMaterial, files: TlsFiles) -> Any:
    """Server credentials that pick up renewed certificate files on the next handshake."""

    def config(m: TlsMaterial) -> Any:
        return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.ca)

    def stamp() -> tuple[float, ...]:
        try:
            return tuple(p.stat().st_mtime_ns for p in (files.cert, files.key, files.ca))
        except OSError:
            return ()

    state = {"stamp": stamp()}
    lock = threading.Lock()

    def fetch() -> Any:
        with lock:
            now = stamp()
            if not now or now == state["stamp"]:
                return None
            state["stamp"] = now
            try:
                material = files.load()
            except Exception as e:
                log.warning(
                    "renewed certificate files are not usable; keeping the old ones",
                    extra={"event": "tls_reload", "error": str(e)},
                )
                return None
        log.info("certificate files changed: reloaded", extra={"event": "tls_reload"})
        return config(material)

    return grpc.dynamic_ssl_server_credentials(
        config(initial), fetch, require_client_authentication=True
    )


class _Undecodable:
    """Stands for a request payload that is not a valid message of the method's type."""


_UNDECODABLE = _Undecodable()
UNDECODABLE_MESSAGE = "the request payload is not a valid protobuf message for this method"
_UNDECODABLE_MESSAGE = UNDECODABLE_MESSAGE


class RefuseUndecodable(grpc.ServerInterceptor):  # type: ignore[misc]
    """A payload that does not decode is the caller's error: answer INVALID_ARGUMENT.

    Left alone, grpc answers INTERNAL ("Exception deserializing request!") before any
    servicer runs. Here the deserializer never raises; it hands the servicer a marker,
    and the wrapped behaviour refuses the call when it sees it. `on_refused(method,
    context)` runs first (the servers audit the refusal there); it must not raise.
    """

    def __init__(self, on_refused: Callable[[str, Any], None] | None = None) -> None:
        self._on_refused = on_refused

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = str(getattr(handler_call_details, "method", ""))
        on_refused = self._on_refused
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer

        def safe_decode(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception:
                return _UNDECODABLE

        def check(request: Any, context: Any) -> Any:
            if request is _UNDECODABLE:
                if on_refused is not None:
                    try:
                        on_refused(method, context)
                    except Exception as e:  # never let auditing hide the refusal
                        log.error("could not audit an undecodable call (%s)", type(e).__name__)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE_MESSAGE)
            return request

        def checked_stream(requests: Any, context: Any) -> Any:
            for request in requests:
                yield check(request, context)

        out = handler.response_serializer
        if handler.unary_unary is not None:
            uu = handler.unary_unary
            return grpc.unary_unary_rpc_method_handler(
                lambda r, c: uu(check(r, c), c), safe_decode, out
            )
        if handler.unary_stream is not None:
            us = handler.unary_stream
            return grpc.unary_stream_rpc_method_handler(
                lambda r, c: us(check(r, c), c), safe_decode, out
            )
        if handler.stream_unary is not None:
            su = handler.stream_unary
            return grpc.stream_unary_rpc_method_handler(
                lambda rs, c: su(checked_stream(rs, c), c), safe_decode, out
            )
        ss = handler.stream_stream
        return grpc.stream_stream_rpc_method_handler(
            lambda rs, c: ss(checked_stream(rs, c), c), safe_decode, out
        )


def wait_for_signal(ready: dict[str, Any], stop: Callable[[], None]) -> int:
    """Print the one JSON ready line a supervisor waits for, then serve until SIGTERM
    or SIGINT, and stop cleanly."""
    log.info("ready", extra={"event": "ready", **ready})
    print(json.dumps({"ready": True, **ready}), flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    stop()
    return 0


def abort(context: Any, refusal: Refusal) -> NoReturn:
    """End the call with the refusal's status. Raises (grpc's abort does)."""
    context.abort(getattr(grpc.StatusCode, refusal.code), refusal.message)
    raise AssertionError("grpc abort returned")


def guarded(context: Any, call: Callable[[], R]) -> R:
    """Run a servicer's domain call. A Refusal becomes its status. Anything else is a
    fault of ours: the caller gets a generic INTERNAL, and the log gets the exception
    type and code locations only, because exception text can carry data values."""
    try:
        return call()
    except Refusal as r:
        refusal = r
    except Exception as e:
        where = "; ".join(
            f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
            for f in traceback.extract_tb(e.__traceback__)[-4:]
        )
        log.error("internal error %s at %s", type(e).__name__, where)
        refusal = Refusal("INTERNAL", "internal error; nothing was released")
    abort(context, refusal)
