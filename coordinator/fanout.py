"""Calling many nodes at once: one asyncio loop thread with grpc.aio channels, one
channel per node reused across calls, and every call bounded by a deadline.

Outcomes are handed back as each call completes, so the caller can stream progress.
A node is never dropped: it comes back OK, or with the gRPC status of its failure
(DEADLINE_EXCEEDED for a node that hung, UNAVAILABLE for one that is down).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc import aio

from tessera import approvals, requests
from tessera.coordinator import convert
from tessera.coordinator.model import NodeAnswer, NodeDescription, Outcome
from tessera.tls import TlsMaterial, pinned_options
from tessera.wire.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger("tessera.coordinator")
_SERVICE = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
# The reply message of each method the fan-out calls.
_REPLIES: dict[str, Any] = {
    "Execute": node_pb2.ExecuteReply,
    "Describe": node_pb2.DescribeReply,
    "GetBudget": node_pb2.GetBudgetReply,
}
T = TypeVar("T")
# Beyond its deadline, how long to wait for a call's outcome before giving up on it.
_GRACE = 5.0


@dataclass(frozen=True)
class Target:
    organisation: str
    address: str
    # The node's certificate identity (config `identity`). The channel pins it: the
    # TLS handshake accepts only a certificate naming this node (tls.pinned_options).
    identity: str = ""


class FanOut:
    """Thread-safe. `close()` ends the loop thread and closes every channel."""

    def __init__(self, tls: TlsMaterial, max_message_bytes: int) -> None:
        self._credentials = tls.channel_credentials()
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A node that comes back is found again within a few seconds.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 3000),
        ]
        self._channels: dict[tuple[str, str], aio.Channel] = {}  # only on the loop thread
        self._methods: dict[tuple[str, str, str], Any] = {}  # likewise
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tessera-fanout", daemon=True
        )
        self._thread.start()
        self._closed = False
        # organisation -> node key id, learnt by secure aggregation's Describe round and
        # reused by later sessions (coordinator/secagg_run.run_for_query)
        self.node_keys: dict[str, str] = {}

    # -- domain calls ----------------------------------------------------------------

    def execute(
        self,
        targets: Sequence[Target],
        canonical: bytes,
        approval_list: Sequence[approvals.Approval],
        signed: requests.SignedRequest,
        deadline: float,
    ) -> Iterator[Outcome[NodeAnswer]]:
        request = convert.execute_request(canonical, approval_list, signed)
        return self._call(targets, "Execute", request, convert.answer_from_proto, deadline)

    def describe(
        self, targets: Sequence[Target], deadline: float
    ) -> Iterator[Outcome[NodeDescription]]:
        return self._call(
            targets,
            "Describe",
            node_pb2.DescribeRequest(),
            convert.description_from_proto,
            deadline,
        )

    def budgets(
        self, targets: Sequence[Target], deadline: float
    ) -> Iterator[Outcome[NodeDescription]]:
        return self._call(
            targets,
            "GetBudget",
            node_pb2.GetBudgetRequest(),
            convert.description_from_proto,
            deadline,
        )

    def run_with_stubs(
        self,
        make: Callable[[Callable[[Target], Any]], Coroutine[Any, Any, T]],
        timeout: float,
    ) -> T:
        """Run one coroutine on the fan-out loop, given each target's NodeService stub
        (secure aggregation's session driver, tessera.coordinator.secagg_run)."""
        if self._closed:
            raise RuntimeError("fan-out is closed")

        def stub(t: Target) -> Any:
            return node_pb2_grpc.NodeServiceStub(self._channel(t.address, t.identity))

        return asyncio.run_coroutine_threadsafe(make(stub), self._loop).result(timeout)

    # -- machinery -------------------------------------------------------------------

    def _call(
        self,
        targets: Sequence[Target],
        method: str,
        request: Any,
        decode: Callable[[Any], T],
        deadline: float,
    ) -> Iterator[Outcome[T]]:
        """Start every call now; yield outcomes in the order they complete."""
        if self._closed:
            raise RuntimeError("fan-out is closed")
        wire: bytes = request.SerializeToString()
        done: queue.Queue[Outcome[T]] = queue.Queue()
        # One hand-off to the loop thread per fan-out, not one per node: each costs a
        # wake-up of the loop and a chained future.
        self._submit(self._all(targets, method, wire, decode, deadline, done))
        return self._collect(targets, done, deadline)

    def _collect(
        self, targets: Sequence[Target], done: queue.Queue[Outcome[T]], deadline: float
    ) -> Iterator[Outcome[T]]:
        give_up = time.monotonic() + deadline + _GRACE
        pending = {t.organisation for t in targets}
        while pending:
            try:
                o = done.get(timeout=max(0.0, give_up - time.monotonic()))
            except queue.Empty:
                break
            pending.discard(o.organisation)
            yield o
        # Only if the loop itself stalled: still, no node goes unreported.
        for org in sorted(pending):
            yield Outcome(
                org,
                "DEADLINE_EXCEEDED",
                "no outcome within the deadline",
                (deadline + _GRACE) * 1000,
            )

    async def _all(
        self,
        targets: Sequence[Target],
        method: str,
        request: bytes,
        decode: Callable[[Any], T],
        deadline: float,
        done: queue.Queue[Outcome[T]],
    ) -> None:
        calls = [
            asyncio.ensure_future(self._one(t, method, request, decode, deadline, done))
            for t in targets
        ]
        if calls:
            await asyncio.wait(calls)

    async def _one(
        self,
        target: Target,
        method: str,
        request: bytes,
        decode: Callable[[Any], T],
        deadline: float,
        done: queue.Queue[Outcome[T]],
    ) -> None:
        start = time.monotonic()

        def outcome(status: str, message: str, value: T | None = None) -> Outcome[T]:
            ms = (time.monotonic() - start) * 1000
            return Outcome(target.organisation, status, message, round(ms, 3), value)

        try:
            call = self._method(target.address, target.identity, method)
            reply = await call(request, timeout=deadline)
            result = outcome("OK", "", decode(reply))
        except aio.AioRpcError as e:
            code = e.code()
            name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            result = outcome(name, _message(code, e.details(), deadline))
        except Exception as e:  # a fault of ours; never let a node vanish
            log.error("call to %s failed: %s", target.organisation, type(e).__name__)
            result = outcome("INTERNAL", "the coordinator could not make this call")
        done.put(result)

    def _method(self, address: str, identity: str, method: str) -> Any:
        """The node's `method`, bound once per channel. It takes the request already
        serialised: a fan-out sends every node the same bytes, encoded once (`_call`)."""
        key = (address, identity, method)
        call = self._methods.get(key)
        if call is None:
            call = self._channel(address, identity).unary_unary(
                f"/{_SERVICE}/{method}",
                request_serializer=None,
                response_deserializer=_REPLIES[method].FromString,
                _registered_method=True,
            )
            self._methods[key] = call
        return call

    def _channel(self, address: str, identity: str) -> aio.Channel:
        ch = self._channels.get((address, identity))
        if ch is None:
            options = self._options + (pinned_options(identity) if identity else [])
            ch = aio.secure_channel(address, self._credentials, options=options)
            self._channels[(address, identity)] = ch
        return ch

    def _submit(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            for ch in self._channels.values():
                await ch.close()
            self._channels.clear()
            self._methods.clear()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


def _message(code: Any, details: str | None, deadline: float) -> str:
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within the deadline of {deadline:g} s"
    # A node's refusals carry no record-level values (tessera.errors); keep them short.
    return (details or "the node could not be reached")[:500]
