"""A virtualenv of its own for an engine whose pins clash with Tessera's (SmartNoise
SQL, OpenMined PSI): built once beside the bench, reused while its marker matches."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def ensure(venv: Path, spec: str, log: Callable[[str], None]) -> tuple[Path, float]:
    """The venv's python, and the seconds spent building it (0 when reused)."""
    python = venv / "bin" / "python"
    marker = venv / "bench-spec.txt"
    if python.exists() and marker.exists() and marker.read_text() == spec:
        return python, 0.0
    log(f"  building {venv.relative_to(venv.parent.parent)} with {spec}")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", spec],
        check=True,
        timeout=1200,
    )
    marker.write_text(spec)
    return python, time.perf_counter() - start
