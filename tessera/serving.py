"""Building a gRPC server the way every Tessera server runs: mutual TLS only,
message size limits, standard health checking and reflection."""

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
from grpc_reflection.v1alpha import reflection

from tessera.errors import Refusal
from tessera.tls import TlsMaterial

log = logging.getLogger("tessera.serving")
R = TypeVar("R")


@dataclass
class Running:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def serve(
    *,
    address: str,
    tls: TlsMaterial,
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    max_message_bytes: int,
    max_workers: int = 16,
) -> Running:
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_metadata_size", 16 * 1024),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=options,
        interceptors=[RefuseUndecodable()],
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_secure_port(address, tls.server_credentials())
    if port == 0:
        raise OSError(f"could not listen on {address}")
    server.start()
    for name in ("", *service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Running(server, port, health_servicer)


class _Undecodable:
    """Stands for a request payload that is not a valid message of the method's type."""


_UNDECODABLE = _Undecodable()
_UNDECODABLE_MESSAGE = "the request payload is not a valid protobuf message for this method"


class RefuseUndecodable(grpc.ServerInterceptor):  # type: ignore[misc]
    """A payload that does not decode is the caller's error: answer INVALID_ARGUMENT.

    Left alone, grpc answers INTERNAL ("Exception deserializing request!") before any
    servicer runs. Here the deserializer never raises; it hands the servicer a marker,
    and the wrapped behaviour refuses the call when it sees it.
    """

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
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
