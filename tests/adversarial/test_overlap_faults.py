"""An overlap count with a node process killed (SIGKILL) mid-protocol: a clean failure
with the reason, no release; the session is never rejoined after the restart, and the
next attempt is a fresh session that releases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio

from tessera import requests
from tessera.coordinator import overlap_run
from tessera.wire.v1 import node_pb2_grpc
from tessera.wire.v1 import overlap_pb2 as pb
from tests.adversarial import fault_support as fs
from tests.integration.test_overlap import signed_request
from tests.support import federation as fedlib
from tests.support import overlap as ovlib


class Procs:
    def __init__(self, root: Path) -> None:
        self.fed, cfgs, _ = ovlib.prepare(root)
        self.procs = {
            o: fs.NodeProcess(fs.write_config(self.fed, cfgs[o]), root / f"{o}.log").start()
            for o in ovlib.ORGS
        }
        self.template = ovlib.template(self.fed)

    def stop(self) -> None:
        for p in self.procs.values():
            p.kill()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop()


def _drive(p: Procs, signed: requests.SignedRequest, st: Any, **kw: Any) -> Any:
    async def go() -> overlap_run.OverlapOutcome:
        creds = p.fed.tls("coordinator").load().channel_credentials()
        chans = [aio.secure_channel(f"localhost:{p.procs[o].port}", creds) for o in ovlib.ORGS]
        try:
            return await overlap_run.run(
                [(o, node_pb2_grpc.NodeServiceStub(c)) for o, c in zip(ovlib.ORGS, chans)],
                signed_template=st,
                signed=signed,
                request_id=requests.parse(signed.body).request_id,
                counter=overlap_run.counter_index(p.template),
                step_deadline_ms=10_000,
                **kw,
            )
        finally:
            for c in chans:
                await c.close()

    return asyncio.run(go())


def test_a_node_killed_mid_protocol_fails_cleanly(procs: Procs) -> None:
    st = fedlib.sign_template(procs.template, procs.fed.approvers[:2])
    signed = signed_request(procs, st)  # type: ignore[arg-type]

    def kill_council(to: int, raw: bytes) -> bytes:
        # The first blinded set on its way to the council: it has paid and is blinding.
        if to == 1 and pb.OverlapMessage.FromString(raw).WhichOneof("body") == "blinded":
            procs.procs[ovlib.COUNCIL].kill()
        return raw

    out = _drive(procs, signed, st, relay=kill_council)
    assert out.release is None
    assert out.aborted.startswith("deliver: UNAVAILABLE"), out.aborted
    assert ovlib.COUNCIL in out.reasons
    # The council restarts: the session it joined is never joined again...
    procs.procs[ovlib.COUNCIL].start()
    again = _drive(procs, signed, st)
    assert again.release is None and "already joined" in again.aborted
    # ...and the next attempt is a fresh session, with a fresh charge, that releases.
    retry = _drive(procs, signed, st, attempt=2)
    assert not retry.aborted and retry.release is not None, retry.aborted
