"""Child processes for the demo: start with a ready line, never leave one behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    port: int
    log: IO[Any]

    def kill(self) -> None:
        """kill -9, for fault drills."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


class Processes:
    """Starts processes and, on exit, stops every one of them (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, module: str, args: Sequence[str], timeout: float = 60) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the process's own ready line
        if not line:
            proc.wait(timeout=timeout)
            log.close()
            raise RuntimeError(f"{name} exited before it was ready; see {log.name}")
        child = Child(name, proc, int(json.loads(line)["port"]), log)
        self.children.append(child)
        return child

    def stop_all(self, grace: float = 5.0) -> None:
        for c in self.children:
            if c.proc.poll() is None:
                c.proc.terminate()
        for c in self.children:
            try:
                c.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(timeout=grace)
            if c.proc.stdout is not None:
                c.proc.stdout.close()
            with contextlib.suppress(OSError):
                c.log.close()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
