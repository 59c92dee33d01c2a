"""The ledger's running totals: per accountant, in zCDP ρ composed by OpenDP, for the
lifetime and per period; checked and paid inside the one write transaction."""

from __future__ import annotations

import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.clock import FixedClock
from tessera.errors import Refusal
from tessera.keys import SigningKey
from tessera.node import privacy
from tessera.node.config import Policy
from tessera.node.ledger import Ledger, LedgerSchemaError, NewRelease, RequestRecord, period_of

BODY = {
    "actor": None,
    "template_digest": None,
    "params": None,
    "mode": None,
    "cost": 0.0,
    "outcome": "OK",
    "message": "",
}
CHILDREN = "population:children"


def _release(
    i: int, cost: float, kind: str = "epsilon", dataset: str = "ssda903", version: int = 1
) -> NewRelease:
    rho = privacy.pure_to_rho(cost) if kind == "epsilon" else cost
    return NewRelease(
        f"a{i}", dataset, version, "d" * 64, {"i": i}, kind, cost, b"{}", CHILDREN, rho
    )


def _req(i: int) -> RequestRecord:
    return RequestRecord(f"request-{i:04d}", f"h{i}", "ed25519:x", f"{i:032x}")


def _rows(path: Path) -> list[float]:
    with sqlite3.connect(path) as con:
        return [float(r[0]) for r in con.execute("SELECT rho FROM releases")]


def test_running_total_is_the_composition_of_releases_and_survives_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    key = SigningKey.generate()
    clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))
    policy = Policy(CHILDREN, 2.0, None, None)
    ledger = Ledger(path, key, clock)
    for i in range(8):  # 8 x rho 0.25 (epsilon 0.5 as zCDP is rho 0.125) fills rho 2.0
        ledger.commit(_req(i), f"a{i}", _release(i, 0.25, "rho"), policy, dict(BODY))
    with pytest.raises(Refusal) as err:
        ledger.commit(_req(99), "a99", _release(99, 0.25, "rho"), policy, dict(BODY))
    assert err.value.code == "RESOURCE_EXHAUSTED"
    assert "lifetime" in err.value.message and CHILDREN in err.value.message
    # A cached answer costs nothing.
    ledger.commit(_req(100), "a3", None, policy, dict(BODY))
    spend = ledger.accountant_spend(policy)
    assert spend.lifetime_rho == pytest.approx(2.0)
    assert spend.lifetime_rho == pytest.approx(privacy.compose_rho(_rows(path)))
    # The declared figures are kept per dataset version too (for the record).
    assert ledger.spent("ssda903", 1, "rho") == pytest.approx(2.0)
    ledger.close()
    again = Ledger(path, key, clock)
    assert again.accountant_spend(policy).lifetime_rho == pytest.approx(2.0)
    again.close()


def test_a_new_version_and_another_dataset_draw_on_the_same_total(tmp_path: Path) -> None:
    clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))
    policy = Policy(CHILDREN, 1.0, None, None)
    ledger = Ledger(tmp_path / "l.sqlite", SigningKey.generate(), clock)
    ledger.commit(_req(1), "a1", _release(1, 0.4, "rho", "ssda903", 1), policy, dict(BODY))
    ledger.commit(_req(2), "a2", _release(2, 0.4, "rho", "ssda903", 2), policy, dict(BODY))
    with pytest.raises(Refusal):  # cin is the same children: 0.4 more would exceed 1.0
        ledger.commit(_req(3), "a3", _release(3, 0.4, "rho", "cin", 1), policy, dict(BODY))
    assert ledger.accountant_spend(policy).lifetime_rho == pytest.approx(0.8)
    ledger.close()


def test_period_allowance_and_lifetime_cap(tmp_path: Path) -> None:
    clock = FixedClock(datetime(2026, 3, 30, tzinfo=UTC))
    policy = Policy(CHILDREN, 1.0, "financial_year", 0.5)
    ledger = Ledger(tmp_path / "l.sqlite", SigningKey.generate(), clock, period="financial_year")
    ledger.commit(_req(1), "a1", _release(1, 0.5, "rho"), policy, dict(BODY))
    with pytest.raises(Refusal) as err:  # the 2025-26 allowance is used up
        ledger.commit(_req(2), "a2", _release(2, 0.1, "rho"), policy, dict(BODY))
    assert "FY2025-26 allowance" in err.value.message
    clock.advance(datetime(2026, 4, 1, tzinfo=UTC) - clock.now())  # a new financial year
    ledger.commit(_req(3), "a3", _release(3, 0.5, "rho"), policy, dict(BODY))
    clock.advance(datetime(2027, 4, 1, tzinfo=UTC) - clock.now())
    with pytest.raises(Refusal) as err:  # a fresh allowance, but the lifetime cap holds
        ledger.commit(_req(4), "a4", _release(4, 0.1, "rho"), policy, dict(BODY))
    assert "lifetime" in err.value.message
    spend = ledger.accountant_spend(policy)
    assert (spend.lifetime_rho, spend.period, spend.period_rho) == (1.0, "FY2027-28", 0.0)
    ledger.close()


def test_period_labels() -> None:
    assert period_of("financial_year", datetime(2026, 3, 31, 23, tzinfo=UTC)) == "FY2025-26"
    assert period_of("financial_year", datetime(2026, 4, 1, tzinfo=UTC)) == "FY2026-27"
    assert period_of("calendar_year", datetime(2026, 4, 1, tzinfo=UTC)) == "2026"
    assert period_of("month", datetime(2026, 4, 1, tzinfo=UTC)) == "2026-04"
    assert period_of(None, datetime(2026, 4, 1, tzinfo=UTC)) is None


_OLD_SCHEMA = (
    """CREATE TABLE releases (answer_key TEXT PRIMARY KEY, dataset TEXT NOT NULL,
    version INTEGER NOT NULL, template_digest TEXT NOT NULL, params TEXT NOT NULL,
    kind TEXT NOT NULL, cost REAL NOT NULL, payload BLOB NOT NULL, created TEXT NOT NULL)""",
    "INSERT INTO releases VALUES ('k1', 'ssda903', 1, 'd', '{}', 'epsilon', 2.0, x'7b7d', "
    "'2026-01-01T00:00:00.000000Z')",
    "INSERT INTO releases VALUES ('k2', 'cin', 1, 'd', '{}', 'rho', 0.5, x'7b7d', "
    "'2026-01-01T00:00:00.000000Z')",
)


def test_an_old_ledger_is_migrated_keeping_every_spend_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as con:
        for stmt in _OLD_SCHEMA:
            con.execute(stmt)
    key, clock = SigningKey.generate(), FixedClock(datetime(2026, 1, 2, tzinfo=UTC))
    with pytest.raises(LedgerSchemaError, match="predates per-population accountants"):
        Ledger(path, key, clock)
    ledger = Ledger(path, key, clock, accountant_of=lambda d: CHILDREN)
    # epsilon 2 as zCDP is rho 2, plus rho 0.5: both datasets are the same children.
    spend = ledger.accountant_spend(Policy(CHILDREN, 10.0, None, None))
    assert spend.lifetime_rho == pytest.approx(2.5)
    ledger.close()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["epsilon", "rho"]),
            st.floats(min_value=0.01, max_value=1.5),
            st.sampled_from(["ssda903", "cin", "education"]),
            st.integers(min_value=1, max_value=3),
        ),
        min_size=1,
        max_size=12,
    ),
    st.floats(min_value=0.1, max_value=3.0),
)
def test_any_history_composes_and_never_exceeds_the_cap(
    history: list[tuple[str, float, str, int]], cap: float
) -> None:
    """Whatever mix of mechanisms, datasets and versions: the total is OpenDP's
    composition of the paid releases' rho, never above the cap; refusals pay nothing."""
    policy = Policy(CHILDREN, cap, None, None)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "l.sqlite"
        ledger = Ledger(path, SigningKey.generate(), FixedClock(datetime(2026, 1, 1, tzinfo=UTC)))
        paid = []
        for i, (kind, cost, dataset, version) in enumerate(history):
            release = _release(i, cost, kind, dataset, version)
            try:
                ledger.commit(_req(i), f"a{i}", release, policy, dict(BODY))
            except Refusal as r:
                assert r.code == "RESOURCE_EXHAUSTED"
            else:
                paid.append(release.rho)
            total = ledger.accountant_spend(policy).lifetime_rho
            assert total == pytest.approx(privacy.compose_rho(paid), rel=1e-9, abs=1e-12)
            assert total <= cap * (1 + 1e-9)
        assert sorted(_rows(path)) == pytest.approx(sorted(paid))
        ledger.close()


def test_a_secagg_session_is_joined_once_even_after_reopen(tmp_path: Path) -> None:
    # The join row commits without its own fsync (the share's paid commit covers it):
    # still once per id across a reopen, and the connection is back at synchronous=FULL.
    path = tmp_path / "ledger.sqlite"
    key = SigningKey.generate()
    clock = FixedClock(datetime(2026, 1, 1, tzinfo=UTC))
    ledger = Ledger(path, key, clock)
    assert ledger.join_secagg_session("r1/secagg/1")
    assert not ledger.join_secagg_session("r1/secagg/1")
    assert ledger._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    ledger.close()
    again = Ledger(path, key, clock)
    assert not again.join_secagg_session("r1/secagg/1")
    assert again.join_secagg_session("r1/secagg/2")
    again.close()
