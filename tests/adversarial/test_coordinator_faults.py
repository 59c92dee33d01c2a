"""The coordinator process killed (SIGKILL) in the middle of a fan-out, then the
analyst's client retries the same signed request: every node is paid exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tessera import config, requests
from tessera.client import Client, ClientError, Progress
from tessera.templates.model import Mode
from tests.support import coordinator as region_lib

T2 = "referrals-by-need-and-age"
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}


def _start(cfg_path: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tessera.coordinator.main", "--config", str(cfg_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # its ready line
    assert line, "coordinator exited before it was ready"
    return proc, int(json.loads(line)["port"])


def _reap(proc: subprocess.Popen[str]) -> None:
    proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


def test_coordinator_killed_mid_fan_out_then_retry_spends_once(tmp_path: Path) -> None:
    region = region_lib.start_region(tmp_path)
    procs: list[subprocess.Popen[str]] = []
    try:
        digest = region_lib.published(region, T2)
        # Hand the same state over to a coordinator process we can kill.
        region.coordinator.stop(0)
        region.coordinator = None
        cfg_path = tmp_path / "coordinator.toml"
        cfg_path.write_text(config.dump(region.cfg))
        proc, port = _start(cfg_path)
        procs.append(proc)

        request = requests.new_request(
            template_digest=digest,
            params=P2,
            mode=Mode.COMBINED,
            audience=list(region_lib.COUNCILS),
            analyst_key=region.fed.analyst.public.key_id,
            now=datetime.now(UTC),
        )
        signed = requests.sign(request, region.fed.analyst)
        tls = region.fed.tls(region_lib.ANALYST)

        def kill_after_first(p: Progress) -> None:
            # One node has answered and paid; the others may not have.
            proc.kill()

        with (
            Client(f"localhost:{port}", tls, region.fed.analyst) as client,
            pytest.raises(ClientError),
        ):
            client.submit_request(signed, on_progress=kill_after_first)
        _reap(proc)

        proc, port = _start(cfg_path)
        procs.append(proc)
        with Client(f"localhost:{port}", tls, region.fed.analyst) as client:
            result = client.submit_request(signed)
        assert result.released
        assert sorted(result.nodes_answered) == sorted(region_lib.COUNCILS)
        for node in region.nodes.values():
            spent = node.service.ledger.spent("cin", 1, "rho")
            assert spent == pytest.approx(0.125), "a node was paid twice, or never"
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
            _reap(p)
        region.stop()
