"""The ledger's running totals always equal the sum over its releases."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tessera.clock import FixedClock
from tessera.errors import Refusal
from tessera.keys import SigningKey
from tessera.node.ledger import Ledger, NewRelease, RequestRecord

BODY = {
    "actor": None,
    "template_digest": None,
    "params": None,
    "mode": None,
    "cost": 0.0,
    "outcome": "OK",
    "message": "",
}


def _release(i: int, cost: float, kind: str = "epsilon") -> NewRelease:
    return NewRelease(f"a{i}", "ssda903", 1, "d" * 64, {"i": i}, kind, cost, b"{}")


def _req(i: int) -> RequestRecord:
    return RequestRecord(f"request-{i:04d}", f"h{i}", "ed25519:x", f"{i:032x}")


def _sum(path: Path, kind: str) -> float:
    with sqlite3.connect(path) as con:
        return float(
            con.execute(
                "SELECT coalesce(sum(cost), 0) FROM releases WHERE kind = ?", (kind,)
            ).fetchone()[0]
        )


def test_running_total_matches_releases_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    key = SigningKey.generate()
    clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))
    ledger = Ledger(path, key, clock)
    for i in range(8):  # 8 x 0.25 fills the budget of 2.0
        ledger.commit(_req(i), f"a{i}", _release(i, 0.25), 2.0, dict(BODY))
    with pytest.raises(Refusal) as err:
        ledger.commit(_req(99), "a99", _release(99, 0.25), 2.0, dict(BODY))
    assert err.value.code == "RESOURCE_EXHAUSTED"
    # A cached answer and a rho release leave the epsilon total alone.
    ledger.commit(_req(100), "a3", None, 2.0, dict(BODY))
    ledger.commit(_req(101), "r1", _release(101, 0.1, "rho"), 1.0, dict(BODY))
    assert ledger.spent("ssda903", 1, "epsilon") == pytest.approx(2.0)
    assert ledger.spent("ssda903", 1, "epsilon") == pytest.approx(_sum(path, "epsilon"))
    assert ledger.spent("ssda903", 1, "rho") == pytest.approx(_sum(path, "rho"))
    assert ledger.spent("ssda903", 2, "epsilon") == 0.0
    ledger.close()
    again = Ledger(path, key, clock)
    assert again.spent("ssda903", 1, "epsilon") == pytest.approx(2.0)
    again.close()
