"""What an operator sees of a running server: structured logs, Prometheus metrics and
an optional plaintext health port for probes.

- Logs go to stderr, one line per event, as JSON (`--log-format json`, the default)
  or `key=value` pairs (`--log-format kv`), at `--log-level`. Every RPC writes one
  line: `event=rpc`, method, request id (when the request carries one), status,
  outcome, cost charged and duration. Never a parameter value, a cell or an error
  text: only names, codes and numbers the server chose.
- Metrics (`--metrics HOST:PORT`, plaintext HTTP, `/metrics`): request counts by
  method and status, latency histograms, and whatever gauges the server adds (a
  node adds budget remaining per accountant and its audit head sequence).
- Health (`--health HOST:PORT`): a plaintext gRPC server carrying only
  `grpc.health.v1.Health`, for Kubernetes' gRPC probes, which cannot present a
  client certificate. It shares its status with the mTLS server's health service.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("tessera.rpc")

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "kv")
# Log record attributes that are not the caller's `extra` fields.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


@dataclass(frozen=True)
class OpsOptions:
    """How a server process is observed, from its command line."""

    log_level: str = "info"
    log_format: str = "json"
    metrics: str | None = None
    health: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The observability options shared by `tessera node serve` and `tessera coordinator serve`."""
    parser.add_argument("--log-level", choices=LEVELS, default="info")
    parser.add_argument(
        "--log-format", choices=FORMATS, default="json", help="json lines, or key=value pairs"
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics over plain HTTP here (path /metrics)",
    )
    parser.add_argument(
        "--health",
        metavar="HOST:PORT",
        help="serve grpc.health.v1 only, without TLS, here (for probes)",
    )


def options_from(args: argparse.Namespace) -> OpsOptions:
    return OpsOptions(
        log_level=getattr(args, "log_level", "info"),
        log_format=getattr(args, "log_format", "json"),
        metrics=getattr(args, "metrics", None),
        health=getattr(args, "health", None),
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_extra(record))
        return json.dumps(out, default=str, sort_keys=False)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        pairs = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extra(record),
        }
        return " ".join(f"{k}={_kv(v)}" for k, v in pairs.items())


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _kv(v: Any) -> str:
    s = str(v)
    if s == "" or not s.isprintable() or any(c in s for c in ' "='):
        return json.dumps(s)
    return s


def configure_logging(options: OpsOptions, stream: Any = None) -> None:
    """Send every `tessera.*` log line to stderr in the chosen format and level."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if options.log_format == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, options.log_level.upper()))


class Metrics:
    """One registry per server, so that tests running several servers stay apart."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tessera_requests",
            "RPCs handled, by method and final gRPC status",
            ["server", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tessera_request_duration_seconds",
            "Time from an RPC's arrival to its answer, by method",
            ["server", "method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def observe(self, method: str, status: str, seconds: float) -> None:
        self.requests.labels(self.server, method, status).inc()
        self.latency.labels(self.server, method).observe(seconds)

    def add_gauges(self, collect: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        """Gauges computed when scraped (budget left, audit head): never stale."""
        self.registry.register(_Callback(collect))

    def serve_http(self, address: str) -> tuple[Any, int]:
        """Serve /metrics on `address` (plain HTTP). Returns (server, port)."""
        from prometheus_client import start_http_server

        host, port = split_address(address)
        httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        return httpd, int(httpd.server_address[1])


class _Callback(Collector):
    def __init__(self, collect: Callable[[], Iterable[GaugeMetricFamily]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            yield from self._collect()
        except Exception as e:  # a scrape must not take the server down
            logging.getLogger("tessera.metrics").warning(
                "gauge collection failed", extra={"error": type(e).__name__}
            )

    def describe(self) -> list[Any]:
        return []


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`, port 0 to 65535. Raises ValueError with a reason."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit():
        raise ValueError(f"{address!r}: the port must be a number from 0 to 65535")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{address!r}: port {port} is outside 0 to 65535")
    return host, port


def _request_id(request: Any) -> str | None:
    """The request id an Execute carries, read from its signed body (an id the client
    chose, checked by the node to be letters, digits and '-'; not a data value)."""
    inner = getattr(request, "request", None)
    body = getattr(inner, "canonical", None)
    if not isinstance(body, bytes) or not body:
        return None
    try:
        # Plain JSON, not canonical.decode: the node checks the body itself; this only
        # names the call in the log, and the id is checked below before it is written.
        d = json.loads(body)
    except Exception:
        return None
    rid = d.get("request_id") if isinstance(d, Mapping) else None
    if (
        isinstance(rid, str)
        and len(rid) <= 64
        and all((c.isascii() and c.isalnum()) or c == "-" for c in rid)
    ):
        return rid
    return None


def _cost(reply: Any) -> float | None:
    """The privacy loss an answer charged (whichever unit the node reports it in)."""
    answer = getattr(reply, "answer", None)
    charged = getattr(answer, "charged", None)
    if charged is None or not hasattr(charged, "ListFields"):
        return None
    for _field, value in charged.ListFields():
        if isinstance(value, int | float):
            return float(value)
    return 0.0


# Statuses that say the server (or the network) failed, not that it said no.
_FAILED = {"INTERNAL", "UNKNOWN", "CANCELLED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "DATA_LOSS"}


def _outcome(status: str) -> str:
    if status == "OK":
        return "answered"
    return "failed" if status in _FAILED else "refused"


class Observe(grpc.ServerInterceptor):  # type: ignore[misc]
    """Times every unary call and every server-streaming call (the coordinator's
    RunQuery), counts it by final status and writes its one log line."""

    def __init__(self, metrics: Metrics, final: Callable[[Any], bool] | None = None) -> None:
        self.metrics = metrics
        # Whether a streamed message is a call's last word (the coordinator's result
        # event): a client that stops reading after it has had its answer.
        self.final = final

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        method = str(handler_call_details.method).rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: Any) -> Any:
                start = time.perf_counter()
                reply = None
                try:
                    reply = inner(request, context)
                    return reply
                finally:
                    self._record(method, request, reply, context, start, reply is not None)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def streaming(request: Any, context: Any) -> Iterator[Any]:
                start = time.perf_counter()
                state = {"finished": False, "recorded": False}
                lock = threading.Lock()

                def record() -> None:
                    with lock:
                        if state["recorded"]:
                            return
                        state["recorded"] = True
                    self._record(method, request, None, context, start, state["finished"])

                # A client that stops reading ends the call without ending this
                # generator: the termination callback still records it, once.
                context.add_callback(record)
                try:
                    for message in inner_stream(request, context):
                        if self.final is not None and self.final(message):
                            state["finished"] = True
                        yield message
                    state["finished"] = True
                finally:
                    record()

            return grpc.unary_stream_rpc_method_handler(
                streaming, handler.request_deserializer, handler.response_serializer
            )
        return handler

    def _record(
        self, method: str, request: Any, reply: Any, context: Any, start: float, finished: bool
    ) -> None:
        code = context.code()
        if code is not None:
            status = code.name
        elif finished:
            status = "OK"
        else:  # an exception grpc turns into UNKNOWN, or a client that went away
            status = "UNKNOWN" if context.is_active() else "CANCELLED"
        seconds = time.perf_counter() - start
        self.metrics.observe(method, status, seconds)
        if not log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "event": "rpc",
            "method": method,
            "status": status,
            "outcome": _outcome(status),
            "duration_ms": round(seconds * 1000, 2),
        }
        rid = _request_id(request)
        if rid is not None:
            fields["request_id"] = rid
        cost = _cost(reply) if reply is not None else None
        if cost is not None:
            fields["cost"] = cost
        log.info("rpc", extra=fields)


class Ops:
    """The plaintext side servers of one process (metrics HTTP, health gRPC)."""

    def __init__(self) -> None:
        self.metrics_port: int | None = None
        self.health_port: int | None = None
        self._http: Any = None
        self._health: grpc.Server | None = None
        self._lock = threading.Lock()

    def start(self, options: OpsOptions, metrics: Metrics, health_servicer: Any) -> None:
        from grpc_health.v1 import health_pb2_grpc

        if options.metrics:
            try:
                self._http, self.metrics_port = metrics.serve_http(options.metrics)
            except ValueError as e:
                raise PortError(f"--metrics: {e}") from None
            except OSError as e:
                raise PortError(
                    f"--metrics: cannot listen on {options.metrics}: {e.strerror}"
                ) from None
        if options.health:
            from concurrent import futures

            try:
                split_address(options.health)
            except ValueError as e:
                raise PortError(f"--health: {e}") from None
            server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)]
            )
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            try:
                port = bind_port(server, options.health, None)
            except PortError as e:
                raise PortError(f"--health: {e}") from None
            server.start()
            self._health = server
            self.health_port = port

    def stop(self) -> None:
        with self._lock:
            if self._health is not None:
                self._health.stop(0).wait()
                self._health = None
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
                self._http = None


class PortError(OSError):
    """An address a server could not listen on."""


def bind_port(server: grpc.Server, address: str, credentials: Any) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise PortError(
            f"cannot listen on {address}: the port is in use (another server, perhaps "
            "another node, holds it) or the address is not on this machine"
        )
    return int(port)
