"""kill -9 a node process in the middle of a burst of concurrent queries: after a
restart, the recorded spend covers every answer that reached a client, and the
audit log verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import grpc
import pytest

from tessera import audit, config
from tessera.node.config import DatasetConfig, NodeConfig, PrivacyConfig
from tests.support import federation as fedlib

_NODE = (sys.executable, "-X", "faulthandler", "-m", "tessera.node.main")


def _start(cfg_path: Path) -> tuple[subprocess.Popen[str], int]:
    # faulthandler: a node that does not stop is made to print every thread's stack
    # (to its log file, read by `_reap`) before the test fails.
    log = cfg_path.with_suffix(f".{len(list(cfg_path.parent.glob('*.stderr')))}.stderr")
    with log.open("w") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [*_NODE, "--config", str(cfg_path)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    proc.log_path = log  # type: ignore[attr-defined]
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the ready line: no sleeping
    assert line, "node exited before it was ready"
    return proc, int(json.loads(line)["port"])


def _reap(proc: subprocess.Popen[str]) -> None:
    try:
        proc.wait(timeout=90)  # a stopping node may wait up to 60 s for a frame build
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints the stacks
        proc.wait(timeout=30)
        stacks = proc.log_path.read_text()[-6000:]  # type: ignore[attr-defined]
        pytest.fail(f"the node did not stop; its threads:\n{stacks}")
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


def _spent(fed: fedlib.Federation, port: int) -> float:
    from tessera.wire.v1 import node_pb2

    stub = fedlib.node_stub(fed, port)
    reply = stub.GetBudget(node_pb2.GetBudgetRequest(), timeout=10)
    # The accountant's spend in zCDP rho (each epsilon 0.5 answer is rho 0.125).
    return sum(d.budget_spent.rho for d in reply.datasets if d.name == "ssda903")


@pytest.mark.slow
def test_kill_9_mid_burst_never_releases_unpaid_answers(fed: fedlib.Federation) -> None:
    import dataclasses

    cfg: NodeConfig = fedlib.node_config(fed, "Leeds")
    cfg = dataclasses.replace(
        cfg,
        datasets={"ssda903": DatasetConfig(), "cin": DatasetConfig()},
        privacy=PrivacyConfig(delta=1e-6, lifetime_rho=1000.0),
    )
    fedlib.ingest_council(fed, cfg)
    cfg_path = fed.root / "leeds.toml"
    cfg_path.write_text(config.dump(cfg))

    proc, port = _start(cfg_path)
    signed = fedlib.sign_template(fed.template("cla-by-age-and-placement"), fed.approvers[:2])
    delivered: list[float] = []
    lock = threading.Lock()
    answered = threading.Event()

    def ask(i: int) -> None:
        day = (date(2016, 1, 1) + timedelta(days=i)).isoformat()
        stub = fedlib.node_stub(fed, port)
        try:
            reply = stub.Execute(fedlib.execute_request(fed, signed, {"on_date": day}), timeout=20)
        except grpc.RpcError:
            return
        with lock:
            delivered.append(reply.answer.charged.epsilon**2 / 2)  # as zCDP rho
            if len(delivered) >= 15:
                answered.set()

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(ask, i) for i in range(200)]
        answered.wait(timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        _reap(proc)
        for f in futures:
            f.result()

    assert delivered, "no answer reached a client before the kill"
    proc, port = _start(cfg_path)
    try:
        spent = _spent(fed, port)
    finally:
        proc.terminate()
        _reap(proc)
    assert spent >= sum(delivered) - 1e-9
    result = audit.verify(cfg.state_dir / "ledger.sqlite", fed.node_key.public)
    assert result.ok, result.problems
