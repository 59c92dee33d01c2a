"""The nodes the coordinator routes to: from config, refreshed from each node's Describe.

Health is the outcome of the last call to the node, whatever the call was.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tessera.clock import Clock, isoformat
from tessera.coordinator.config import NodeConfig
from tessera.coordinator.fanout import FanOut, Target
from tessera.coordinator.model import UNREACHABLE, NodeDescription, NodeStatus, Outcome

UNKNOWN, SERVING, NOT_SERVING = "UNKNOWN", "SERVING", "NOT_SERVING"


@dataclass
class _Entry:
    cfg: NodeConfig
    datasets: tuple[str, ...]
    health: str = UNKNOWN
    # The last call: when, and how it went (written out when asked, not per call).
    last: tuple[datetime, str, str] | None = None

    @property
    def detail(self) -> str:
        if self.last is None:
            return "not called yet"
        when, status, message = self.last
        return f"last call {isoformat(when)}: {status}" + (f" ({message})" if message else "")


class Registry:
    """Thread-safe."""

    def __init__(
        self, nodes: Sequence[NodeConfig], fanout: FanOut, deadline: float, clock: Clock
    ) -> None:
        self._entries = {n.organisation: _Entry(n, tuple(sorted(n.datasets))) for n in nodes}
        self._fanout = fanout
        self._deadline = deadline
        self._clock = clock
        self._lock = threading.Lock()

    def targets(self, organisations: Iterable[str] | None = None) -> list[Target]:
        wanted = set(self._entries) if organisations is None else set(organisations)
        return [
            Target(org, e.cfg.address, e.cfg.identity)
            for org, e in sorted(self._entries.items())
            if org in wanted
        ]

    def knows(self, organisation: str) -> bool:
        return organisation in self._entries

    def hosts(self, organisation: str, dataset: str) -> bool:
        with self._lock:
            e = self._entries.get(organisation)
            return e is not None and dataset in e.datasets

    def refresh(self) -> None:
        """Describe every node, in parallel, each within the deadline."""
        for o in self._fanout.describe(self.targets(), self._deadline):
            self._described(o)

    def _described(self, o: Outcome[NodeDescription]) -> None:
        if o.ok and o.value is not None and o.value.organisation != o.organisation:
            # Someone else answers at this address: never route to it.
            said = f"the node at this address describes itself as {o.value.organisation!r}"
            self._set(o.organisation, NOT_SERVING, "FAILED_PRECONDITION", said)
            return
        self.record(o)
        if o.ok and o.value is not None:
            with self._lock:
                self._entries[o.organisation].datasets = tuple(
                    sorted({d.name for d in o.value.datasets})
                )

    def record(self, o: Outcome[Any]) -> None:
        """Note how the last call to a node went: any answer, even a refusal, means
        the node is serving."""
        health = NOT_SERVING if o.status in UNREACHABLE else SERVING
        self._set(o.organisation, health, o.status, o.message)

    def _set(self, organisation: str, health: str, status: str, message: str) -> None:
        when = self._clock.now()
        with self._lock:
            e = self._entries.get(organisation)
            if e is None:
                return
            e.health = health
            e.last = (when, status, message)

    def statuses(self) -> list[NodeStatus]:
        with self._lock:
            return [
                NodeStatus(org, e.cfg.address, e.cfg.identity, e.datasets, e.health, e.detail)
                for org, e in sorted(self._entries.items())
            ]
