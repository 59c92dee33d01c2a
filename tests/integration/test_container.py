"""The image from infra/image: built here with podman (its base made from Debian's
packages when no registry is reachable), it runs `tessera demo` as a non-root user
on a read-only root filesystem, without a network, and carries no key.

Skipped, with the reason, where podman, runc or a base image cannot be had. Takes
about two minutes the first time (debootstrap, then the wheels), less after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/tessera:test"
BASE = "localhost/tessera-base:bookworm"
RUN = (
    "podman",
    "--runtime",
    "runc",
    "run",
    "--rm",
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--network",
    "none",
)

pytestmark = pytest.mark.slow


def _why_not() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc debootstrap)"
    if shutil.which("runc") is None and not Path("/usr/sbin/runc").exists():
        return "runc is not installed (podman's default crun fails on this machine)"
    has_base = subprocess.run(["podman", "image", "exists", BASE], capture_output=True)
    if has_base.returncode != 0 and (shutil.which("debootstrap") is None or os.geteuid() != 0):
        return f"no {BASE} image, and debootstrap (as root) is not available to make one"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    env = {**os.environ, "TESSERA_LOCAL_BASE": "1", "TESSERA_BASE_IMAGE": BASE}
    out = subprocess.run(
        ["bash", str(ROOT / "infra" / "image" / "build.sh"), TAG],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return TAG


def test_the_image_runs_the_demo_read_only_and_offline(image: str, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out_dir.chmod(0o777)  # the container's user (uid 10001) writes the JSON here
    run = subprocess.run(
        [
            *RUN,
            "-v",
            f"{out_dir}:/out",
            image,
            "demo",
            "--scale",
            "0.01",
            "--json",
            "/out/demo.json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out_dir / "demo.json").read_text())
    assert len(summary["nodes"]) == 7
    assert summary["queries"]
    assert all(d["status"] != "OK" and d["budget_spent"] == 0 for d in summary["drills"])


def test_the_image_runs_as_a_user_and_carries_no_secret(image: str) -> None:
    who = subprocess.run(
        [*RUN, "--entrypoint", "id", image], capture_output=True, text=True, timeout=120
    )
    assert who.returncode == 0, who.stderr
    assert who.stdout.startswith("uid=10001(tessera)")
    found = subprocess.run(
        [
            *RUN,
            "--entrypoint",
            "sh",
            image,
            "-c",
            "find / -xdev \\( -name '*.key' -o -name '*.toml' -path '*/etc/*' \\) -print; "
            "grep -rlI -e 'BEGIN PRIVATE KEY' -e 'BEGIN EC PRIVATE KEY' /opt /etc /var/lib "
            "2>/dev/null; true",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == ""


def test_the_image_answers_a_config_mistake_in_two_lines(image: str) -> None:
    out = subprocess.run(
        [*RUN, image, "node", "serve", "--config", "/nowhere/node.toml"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "/nowhere/node.toml" in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2
