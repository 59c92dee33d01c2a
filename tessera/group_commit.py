"""Group commit: writers that arrive together share one transaction (and one fsync).

Each writer queues its job. If no batch is running, it leads: it takes every job
queued so far and runs them in one batch under the writer lock. Otherwise it waits
for the running batch to end, then returns if its job was in it, or leads the next.
So each caller is released only after the commit that covers its own job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


@dataclass
class Slot(Generic[J, R]):
    """One writer's job and, once its batch has run, its result or its error."""

    job: J
    done: bool = False
    result: R | None = None
    error: BaseException | None = field(default=None)

    def finish(self, result: R | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True


class GroupCommit(Generic[J, R]):
    """`run_batch(slots)` runs under `lock` and must finish every slot it is given."""

    def __init__(self, lock: threading.Lock, run_batch: Callable[[Sequence[Slot[J, R]]], None]):
        self._lock = lock
        self._run_batch = run_batch
        self._queue: list[Slot[J, R]] = []
        # Guards the queue and `_leading`; waiters sleep on it, never on `lock`.
        self._cond = threading.Condition(threading.Lock())
        self._leading = False

    def submit(self, job: J) -> R:
        slot: Slot[J, R] = Slot(job)
        with self._cond:
            self._queue.append(slot)
            while self._leading and not slot.done:
                self._cond.wait()
            if not slot.done:
                # Lead: take every job queued by now (its own among them).
                self._leading = True
                batch, self._queue = self._queue, []
        if not slot.done:
            try:
                with self._lock:
                    try:
                        self._run_batch(batch)
                    except BaseException as e:  # reaches each unfinished caller
                        for s in batch:
                            if not s.done:
                                s.finish(error=e)
                for s in batch:
                    if not s.done:
                        s.finish(error=RuntimeError("the group commit left a job unfinished"))
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result
