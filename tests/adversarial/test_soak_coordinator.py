"""Soak through the coordinator: 16 concurrent analysts' clients against a real
coordinator process fanning out to three council nodes, for TESSERA_SOAK_SECONDS
(default 600), half new questions and half repeated ones. Run on demand only:
pytest -m soak. Figures go to tests/adversarial/results/soak_coordinator.json.

Each node must have spent exactly the cost of the distinct questions that reached
it: at least those released, at most those asked."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest

from tessera import config
from tessera.client import Client, ClientError
from tessera.templates.model import Privacy
from tests.support import coordinator as region_lib

T1 = "cla-by-age-and-placement"
CLIENTS = 16
SOAK_SECONDS = min(max(float(os.environ.get("TESSERA_SOAK_SECONDS", "600")), 10.0), 3600.0)
COST = 0.01
RESULTS = Path(__file__).parent / "results"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.mark.soak
def test_soak_through_the_coordinator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(region_lib, "BUDGETS", {"ssda903": (1000.0, None), "cin": (None, 5.0)})
    region = region_lib.start_region(tmp_path)
    proc = None
    try:
        t = region.fed.template(T1)
        cheap = dataclasses.replace(t, privacy=Privacy(epsilon=COST))
        info = region.analyst().submit_template(cheap)
        for i in (0, 1):
            region.approver(i).approve(info.digest)
        region.coordinator.stop(0)
        region.coordinator = None
        cfg_path = tmp_path / "coordinator.toml"
        cfg_path.write_text(config.dump(region.cfg))
        proc = subprocess.Popen(
            [sys.executable, "-m", "tessera.coordinator.main", "--config", str(cfg_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        port = int(json.loads(proc.stdout.readline())["port"])
        address = f"localhost:{port}"

        dates = [date(2015, 3, 31) + timedelta(days=i) for i in range(4000)]
        rng = random.Random(5)  # chooses questions, not noise
        rng.shuffle(dates)
        lock = threading.Lock()
        asked: set[date] = set()
        released: set[date] = set()
        calls: list[tuple[float, float, str]] = []
        rss: list[tuple[float, int]] = []
        start = time.monotonic()
        stop_at = start + SOAK_SECONDS

        def question() -> date:
            with lock:
                if dates and (not asked or rng.random() < 0.5):
                    d = dates.pop()
                else:
                    d = rng.choice(sorted(asked))
                asked.add(d)
                return d

        def worker() -> None:
            tls = region.fed.tls(region_lib.ANALYST)
            with Client(address, tls, region.fed.analyst, timeout=60) as client:
                while time.monotonic() < stop_at:
                    d = question()
                    t0 = time.monotonic()
                    try:
                        r = client.run_query(
                            info.digest, {"on_date": d.isoformat()}, nodes=list(region_lib.COUNCILS)
                        )
                        status = "OK" if r.released else "WITHHELD"
                    except ClientError as e:
                        status = e.code
                    t1 = time.monotonic()
                    with lock:
                        calls.append((t1 - start, (t1 - t0) * 1000, status))
                        if status == "OK":
                            released.add(d)

        threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
        for th in threads:
            th.start()
        while any(th.is_alive() for th in threads):
            rss.append((time.monotonic() - start, _rss_kib(proc.pid)))
            threads[0].join(timeout=5)
        for th in threads:
            th.join()

        errors = sum(1 for c in calls if c[2] != "OK")
        minutes: dict[int, list[float]] = {}
        for end, ms, _ in calls:
            minutes.setdefault(int(end // 60), []).append(ms)
        per_minute = {
            m: {"n": len(v), "p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
            for m, v in sorted(minutes.items())
        }
        first, last = per_minute[min(per_minute)], per_minute[max(per_minute)]
        spent = {
            org: n.service.ledger.spent("ssda903", 1, "epsilon") for org, n in region.nodes.items()
        }
        figures = {
            "seconds": SOAK_SECONDS,
            "clients": CLIENTS,
            "requests": len(calls),
            "errors": errors,
            "per_minute": per_minute,
            "p99_drift": last["p99"] / first["p99"],
            "coordinator_rss_kib_first_last": [rss[0][1], rss[-1][1]] if rss else None,
            "distinct_released": len(released),
            "distinct_asked": len(asked),
            "spent_per_node": spent,
            "command": "TESSERA_SOAK_SECONDS=600 pytest -W error -m soak "
            "tests/adversarial/test_soak_coordinator.py",
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soak_coordinator.json").write_text(json.dumps(figures, indent=2))
        assert errors == 0
        for org, s in spent.items():
            assert len(released) * COST - 1e-6 <= s <= len(asked) * COST + 1e-6, org
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        region.stop()
