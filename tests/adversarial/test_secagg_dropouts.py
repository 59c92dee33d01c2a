"""Secure aggregation with a node killed (SIGKILL) at each stage, on real node
processes over mutual TLS. Each run either releases the right total from exactly the
nodes the protocol names, or releases nothing and says why: never a wrong total.

Five councils, threshold 3. The node processes add their real noise shares, so
"right" is checked cell by cell against the contributors' exact figures within six
standard deviations of the summed noise; a mask left in (a wrong reconstruction)
would put values near 2^63 in the total, and a missing or extra input would break
the contributor list the protocol reports."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc import aio

from tessera import requests, schemas, templates
from tessera.coordinator import secagg_run
from tessera.keys import SigningKey
from tessera.node import compiler, privacy
from tessera.node.catalog import DatasetCatalog
from tessera.node.config import SecureAggregationConfig
from tessera.templates.model import Mode, Template, measure_sensitivities
from tessera.wire.v1 import node_pb2_grpc
from tessera.wire.v1 import secagg_pb2 as pb
from tests.adversarial import fault_support as fs
from tests.support import federation as fedlib

ORGS = ("Bradford", "Calderdale", "Kirklees", "Leeds", "Wakefield")
T2 = "referrals-by-need-and-age"
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}


class Five:
    def __init__(self, root: Path) -> None:
        self.fed = fedlib.make(root, node_names=list(ORGS))
        self.fed.node_keys.update({o: SigningKey.generate() for o in ORGS})
        # Each node takes its peers' keys from the federation roster its approvers signed.
        roster_path = self.fed.write_roster(ORGS)
        self.cfgs = {
            o: dataclasses.replace(
                fs.big_budget_config(self.fed, o),
                secure_aggregation=SecureAggregationConfig(roster_path),
            )
            for o in ORGS
        }
        fedlib.ingest_council(self.fed, self.cfgs[ORGS[0]])
        for o in ORGS[1:]:
            shutil.copytree(self.cfgs[ORGS[0]].data_dir, self.cfgs[o].data_dir)
        self.procs: dict[str, fs.NodeProcess] = {}
        for o in ORGS:
            path = fs.write_config(self.fed, self.cfgs[o])
            self.procs[o] = fs.NodeProcess(path, root / f"{o}.log").start()
        self.template = self.fed.template(T2, threshold=3)
        self.signed_template = fedlib.sign_template(self.template, self.fed.approvers[:2])

    def restart(self, org: str) -> None:
        if not self.procs[org].alive():
            self.procs[org].start()

    def stop(self) -> None:
        for p in self.procs.values():
            p.kill()


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Five]:
    f = Five(tmp_path_factory.mktemp("secagg-five"))
    try:
        yield f
    finally:
        f.stop()


def _exact_one(five: Five) -> np.ndarray[Any, Any]:
    """One council's exact vector (all five hold the same files), read directly."""
    cfg = five.cfgs[ORGS[0]]
    t = five.template
    catalog = DatasetCatalog(cfg.data_dir)
    try:
        version = catalog.latest(t.dataset)
        q = compiler.compile_query(
            t,
            templates.bind(t, P2),
            exclude_opted_out=t.purpose != schemas.DIRECT_CARE,
            order_key=b"\x00" * 32,
        )
        cur = catalog.connect(version).cursor()
        try:
            exact = compiler.run(cur, q)
        finally:
            cur.close()
    finally:
        catalog.close()
    return np.concatenate([exact[m] for m in measure_sensitivities(t.statistic)])


def _session(five: Five, kill_after: str | None, victim: str) -> secagg_run.SecAggOutcome:
    return _session_killing(five, kill_after, {victim})


def _signed(five: Five) -> requests.SignedRequest:
    req = requests.new_request(
        template_digest=templates.digest_of_bytes(five.signed_template.canonical),
        params=P2,
        mode=Mode.SECURE_AGGREGATION,
        audience=ORGS,
        analyst_key=five.fed.analyst.public.key_id,
        now=datetime.now(UTC),
    )
    return requests.sign(req, five.fed.analyst)


def _session_killing(
    five: Five,
    kill_after: str | None,
    victims: set[str],
    signed: requests.SignedRequest | None = None,
) -> secagg_run.SecAggOutcome:
    signed = signed or _signed(five)
    req = requests.parse(signed.body)

    def on_reply(org: str, msg: pb.SecAggMessage) -> None:
        if org in victims and msg.WhichOneof("body") == kill_after:
            five.procs[org].kill()

    async def go() -> secagg_run.SecAggOutcome:
        creds = five.fed.tls("coordinator").load().channel_credentials()
        channels = {o: aio.secure_channel(f"localhost:{five.procs[o].port}", creds) for o in ORGS}
        try:
            return await secagg_run.run(
                [
                    secagg_run.Member(
                        o, five.fed.key_of(o).public.key_id, node_pb2_grpc.NodeServiceStub(ch)
                    )
                    for o, ch in channels.items()
                ],
                signed_template=five.signed_template,
                signed=signed,
                request_id=req.request_id,
                threshold=3,
                vector_length=secagg_run.vector_length(five.template),
                stage_deadline_ms=10_000,
                on_reply=on_reply,
            )
        finally:
            for ch in channels.values():
                await ch.close()

    return asyncio.run(go())


def _noise_sd(t: Template, contributors: int) -> float:
    c = privacy.calibrate(t.privacy, measure_sensitivities(t.statistic))[0]
    share = privacy.secagg_noise_share(
        c.loss, c.sensitivity.l2, 3, secagg_run.vector_length(t), c.sensitivity.l1
    )
    return float(share.scale * np.sqrt(contributors))


# The stage after whose reply the victim is killed, what the protocol must do with it.
CASES = [
    ("before", None, "excluded"),  # down before the session starts
    ("advertise", "advertise", "excluded"),  # keys advertised, no shares: excluded
    ("share_keys", "share_keys", "dropped"),  # shares sent, no input: masks removed
    ("masked_input", "masked_input", "contributor"),  # input in: recovered from shares
    ("consistency", "consistency", "contributor"),  # signed the survivor set, then died
]


@pytest.mark.parametrize(("name", "kill_after", "fate"), CASES, ids=[c[0] for c in CASES])
def test_a_node_killed_at_each_stage(
    five: Five, name: str, kill_after: str | None, fate: str
) -> None:
    victim = "Kirklees"
    five.restart(victim)
    if kill_after is None:
        five.procs[victim].kill()
    out = _session(five, kill_after, victim)
    five.restart(victim)
    # Four of five remain, above the threshold of 3: every case releases.
    assert out.total is not None and not out.aborted, out.reasons
    others = tuple(o for o in ORGS if o != victim)
    if fate == "contributor":
        assert out.contributors == ORGS
    else:
        assert out.contributors == others
        assert victim in (out.dropped if fate == "dropped" else out.excluded)
        assert victim in out.reasons
    expected = len(out.contributors) * _exact_one(five)
    sd = _noise_sd(five.template, len(out.contributors))
    assert np.max(np.abs(out.total - expected)) < 6 * sd + 1, "a wrong total"
    assert set(out.statements) == set(out.contributors)


def test_below_the_threshold_nothing_is_released(five: Five) -> None:
    """Three of five killed after sharing keys: two inputs cannot be released (t = 3)."""
    victims = ("Bradford", "Kirklees", "Wakefield")
    for v in victims:
        five.restart(v)
    req_victims = set(victims)

    out = _session_killing(five, "share_keys", req_victims)
    for v in victims:
        five.restart(v)
    assert out.total is None and not out.statements
    assert "threshold" in out.aborted
    assert req_victims <= set(out.reasons)


def test_a_restarted_node_never_rejoins_a_session(five: Five) -> None:
    """The session ids a node joined are in its ledger: after a kill -9 and a restart,
    the same session is refused (no noisy vector is masked twice), at no cost."""
    for o in ORGS:
        five.restart(o)
    signed = _signed(five)
    first = _session_killing(five, None, set(), signed)
    assert first.total is not None
    five.procs["Leeds"].kill()
    five.restart("Leeds")
    again = _session_killing(five, None, set(), signed)
    assert again.total is None
    assert "already joined" in again.reasons["Leeds"]
