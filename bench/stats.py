"""Summaries of timings, and facts about the machine a run was made on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def summary(samples_ms: Sequence[float], warmup: int = 0) -> dict[str, Any]:
    """Median, p95 and friends of the measured samples (warm-up already excluded)."""
    if not samples_ms:
        return {"n": 0, "warmup": warmup}
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "min_ms": round(float(a.min()), 3),
        "max_ms": round(float(a.max()), 3),
        "n": len(a),
        "warmup": warmup,
    }


def time_calls(fn: Callable[[int], object], warmup: int, reps: int) -> list[float]:
    """Call fn(i) warmup + reps times; return the measured times in ms (warm-up dropped)."""
    out = []
    for i in range(warmup + reps):
        start = time.perf_counter()
        fn(i)
        if i >= warmup:
            out.append((time.perf_counter() - start) * 1000)
    return out


def peak_rss_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak resident set) and VmRSS (now) of a live process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def busy_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds this process and its
    reaped children have used). Their deltas over a run give the CPU that processes
    outside the benchmark took: the noise in its figures."""
    jiffies = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    busy = sum(jiffies[:8]) - jiffies[3] - jiffies[4]
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    mine = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    return busy / os.sysconf("SC_CLK_TCK"), mine


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _meminfo_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024, 0)
    return 0.0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fsync_probe(directory: Path, n: int = 50) -> dict[str, float]:
    """How long an fsync of a small write takes here now: the node fsyncs its ledger
    and audit head on every answer, so a busy disk shows up in its latency."""
    path = directory / ".fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    samples = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 128)
            start = time.perf_counter()
            os.fsync(fd)
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    a = np.asarray(samples)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("grpcio", "protobuf", "duckdb", "opendp", "numpy", "cryptography"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_mb": _meminfo_mb(),
        "platform": platform.platform(),
        "versions": versions(),
    }
