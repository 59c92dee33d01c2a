"""One accountant per population, on a real node over mutual TLS: identical re-ingest
is the same version, a new version never resets, ε and ρ compose in zCDP as OpenDP
computes, a child in two datasets draws on one accountant, and a state folder that
went backwards is refused at start."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc
import opendp.prelude as dp
import pytest

from tessera import config as tconfig
from tessera import schemas
from tessera.cli.main import main as cli_main
from tessera.node import config as node_config
from tessera.node.config import AccountantConfig, NodeConfig, PrivacyConfig
from tessera.node.ingest import ingest_dataset
from tessera.node.main import start
from tessera.node.rollback import RollbackError, check_not_rolled_back
from tessera.wire.v1 import node_pb2
from tests.support import federation as fedlib

T1 = "cla-by-age-and-placement"  # ssda903, epsilon 0.5
T2 = "referrals-by-need-and-age"  # cin, rho 0.125
P1 = {"on_date": "2025-03-31"}
P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}
CHILDREN = "population:children"


def _cfg(fed: fedlib.Federation, lifetime_rho: float = 10.0, **privacy: Any) -> NodeConfig:
    cfg = fedlib.node_config(fed, "Leeds")
    return dataclasses.replace(
        cfg, privacy=PrivacyConfig(delta=1e-6, lifetime_rho=lifetime_rho, **privacy)
    )


@pytest.fixture
def leeds(fed: fedlib.Federation) -> Iterator[tuple[fedlib.Federation, NodeConfig]]:
    cfg = _cfg(fed)
    fedlib.ingest_council(fed, cfg)
    yield fed, cfg


def _budget(stub: Any) -> dict[str, Any]:
    return {d.name: d for d in stub.GetBudget(node_pb2.GetBudgetRequest()).datasets}


def _ask(fed: fedlib.Federation, stub: Any, name: str, params: dict[str, str]) -> Any:
    signed = fedlib.sign_template(fed.template(name), fed.approvers[:2])
    return stub.Execute(fedlib.execute_request(fed, signed, params)).answer


def _reingest(fed: fedlib.Federation, cfg: NodeConfig, extra_child: bool = False) -> None:
    folder = fed.root / "sources" / "again"
    sources = fedlib.write_council_files(folder)
    if extra_child:
        with (folder / "header.csv").open("a") as f:
            f.write("C6,1,01/01/2012,WBRI,,,\n")
        with (folder / "episodes.csv").open("a") as f:
            f.write("C6,01/01/2024,S,C2,N1,U1,PR1,,,,,,\n")
    ds = schemas.dataset("ssda903")
    assert ds is not None
    from datetime import UTC, datetime

    ingest_dataset(ds, sources["ssda903"], cfg.data_dir, datetime(2026, 5, 1, tzinfo=UTC))


def test_identical_reingest_is_the_same_version_and_a_new_one_never_resets(
    leeds: tuple[fedlib.Federation, NodeConfig],
) -> None:
    fed, cfg = leeds
    node = start(cfg)
    try:
        stub = fedlib.node_stub(fed, node.port)
        first = _ask(fed, stub, T1, P1)
        spent = _budget(stub)["ssda903"].lifetime_rho_spent
        assert first.charged.epsilon == pytest.approx(0.5) and spent == pytest.approx(0.125)
        _reingest(fed, cfg)  # byte-identical files, ingested again
        again = _ask(fed, stub, T1, P1)
        assert again.from_cache and again.charged.epsilon == 0.0
        assert list(again.measures[0].values) == list(first.measures[0].values)
        assert _budget(stub)["ssda903"].lifetime_rho_spent == pytest.approx(spent)
        # New content: a new version, a new release, paid on top of what was spent.
        _reingest(fed, cfg, extra_child=True)
        newer = _ask(fed, stub, T1, P1)
        assert not newer.from_cache and newer.charged.epsilon == pytest.approx(0.5)
        assert _budget(stub)["ssda903"].lifetime_rho_spent == pytest.approx(0.25)
    finally:
        node.stop(0)


def test_mixed_epsilon_and_rho_history_is_composed_in_zcdp_by_opendp(
    leeds: tuple[fedlib.Federation, NodeConfig],
) -> None:
    fed, cfg = leeds
    node = start(cfg)
    try:
        stub = fedlib.node_stub(fed, node.port)
        a = _ask(fed, stub, T1, P1)
        b = _ask(fed, stub, T2, P2)
        assert a.cost.epsilon == pytest.approx(0.5) and b.cost.rho == pytest.approx(0.125)
        info = _budget(stub)
    finally:
        node.stop(0)
    # What OpenDP says, computed here from scratch: the Laplace release converted to
    # zCDP, composed with the Gaussian one, then (epsilon, delta) at the node's delta.
    dp.enable_features("contrib", "honest-but-curious")

    def spent(measure: Any, loss: float) -> Any:
        return dp.m.make_user_measurement(
            dp.atom_domain(T=bool), dp.symmetric_distance(), measure, lambda x: x, lambda d: loss
        )

    pure = dp.c.make_pureDP_to_zCDP(spent(dp.max_divergence(), a.cost.epsilon))
    both = dp.c.make_composition([pure, spent(dp.zero_concentrated_divergence(), b.cost.rho)])
    rho = both.map(1)
    eps, _ = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(both), 1e-6).map(1)
    assert rho == pytest.approx(0.5**2 / 2 + 0.125)
    for name in ("ssda903", "cin"):  # one accountant: both datasets show the same spend
        d = info[name]
        assert d.accountant == CHILDREN
        assert d.lifetime_rho_spent == pytest.approx(rho, rel=1e-9)
        assert d.budget_spent.rho == pytest.approx(rho, rel=1e-9)
        assert d.budget_total.rho == pytest.approx(10.0)
        assert d.epsilon_at_delta == pytest.approx(eps, rel=1e-9)
        assert d.delta == pytest.approx(1e-6)


def test_the_audit_finding_epsilon_5_and_rho_1_is_rho_13_5() -> None:
    from tessera.node import privacy

    assert privacy.compose_rho([privacy.pure_to_rho(5.0), 1.0]) == pytest.approx(13.5)


def test_a_child_in_two_datasets_draws_on_one_accountant(fed: fedlib.Federation) -> None:
    cfg = _cfg(fed, lifetime_rho=0.25)  # room for exactly two releases of rho 0.125
    fedlib.ingest_council(fed, cfg)
    node = start(cfg)
    try:
        stub = fedlib.node_stub(fed, node.port)
        _ask(fed, stub, T1, P1)  # ssda903: rho 0.125
        _ask(fed, stub, T2, P2)  # cin, the same children: rho 0.125
        with pytest.raises(grpc.RpcError) as err:
            _ask(fed, stub, T1, {"on_date": "2024-03-31"})
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert CHILDREN in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            _ask(fed, stub, T2, {"period_start": "2024-04-01", "period_end": "2025-03-31"})
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = _budget(stub)
        assert info["ssda903"].lifetime_rho_spent == pytest.approx(0.25)  # refusals cost 0
        assert info["cin"].lifetime_rho_spent == pytest.approx(0.25)
    finally:
        node.stop(0)


def test_a_period_allowance_is_enforced_with_the_lifetime_cap(fed: fedlib.Federation) -> None:
    cfg = _cfg(fed, lifetime_rho=1.0, period="financial_year", period_rho=0.125)
    fedlib.ingest_council(fed, cfg)
    node = start(cfg)
    try:
        stub = fedlib.node_stub(fed, node.port)
        _ask(fed, stub, T1, P1)
        with pytest.raises(grpc.RpcError) as err:
            _ask(fed, stub, T2, P2)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "allowance" in (err.value.details() or "")
        d = _budget(stub)["cin"]
        assert d.period.startswith("FY") and d.period_rho_spent == pytest.approx(0.125)
        assert d.period_rho_total == pytest.approx(0.125)
    finally:
        node.stop(0)


def test_a_rolled_back_state_folder_is_refused_at_start(
    leeds: tuple[fedlib.Federation, NodeConfig], tmp_path: Path
) -> None:
    fed, cfg = leeds
    ledger = cfg.state_dir / "ledger.sqlite"
    node = start(cfg)
    try:
        _ask(fed, fedlib.node_stub(fed, node.port), T1, P1)
    finally:
        node.stop(0)
    backup = tmp_path / "backup"
    shutil.copytree(cfg.state_dir, backup)
    node = start(cfg)
    try:
        _ask(fed, fedlib.node_stub(fed, node.port), T2, P2)
    finally:
        node.stop(0)
    check_not_rolled_back(cfg, ledger)  # the live state folder is fine
    shutil.rmtree(cfg.state_dir)
    shutil.copytree(backup, cfg.state_dir)  # restore the older backup
    with pytest.raises(RollbackError, match="went backwards") as err:
        check_not_rolled_back(cfg, ledger)
    assert "\n" not in str(err.value)
    with pytest.raises(RollbackError):
        start(cfg)
    # A watermark that was edited does not verify; one that was removed is missed.
    mark = cfg.watermark_path
    data = json.loads(mark.read_text())
    data["audit_seq"] = 1
    mark.write_text(json.dumps(data))
    with pytest.raises(RollbackError, match="not signed by this node's key"):
        check_not_rolled_back(cfg, ledger)
    mark.unlink()
    with pytest.raises(RollbackError, match="missing"):
        check_not_rolled_back(cfg, ledger)
    assert not mark.is_relative_to(cfg.state_dir)
    # The operator's explicit way out: adopt the ledger as it stands.
    cfg_path = tmp_path / "node.toml"
    cfg_path.write_text(tconfig.dump(cfg))
    assert cli_main(["node", "adopt-ledger", "--config", str(cfg_path)]) == 0
    check_not_rolled_back(cfg, ledger)


def test_a_ledger_from_another_history_is_refused(
    leeds: tuple[fedlib.Federation, NodeConfig], tmp_path: Path
) -> None:
    fed, cfg = leeds
    node = start(cfg)
    try:
        _ask(fed, fedlib.node_stub(fed, node.port), T1, P1)
    finally:
        node.stop(0)
    # Another state folder (another node's, or one rebuilt from scratch) with its own
    # history, checked against this node's watermark.
    other = dataclasses.replace(
        cfg,
        state_dir=tmp_path / "other",
        privacy=dataclasses.replace(cfg.privacy, watermark=tmp_path / "other-mark.json"),
    )
    node = start(other)
    try:
        _ask(fed, fedlib.node_stub(fed, node.port), T2, P2)
    finally:
        node.stop(0)
    with pytest.raises(RollbackError, match="not this node's history"):
        check_not_rolled_back(cfg, other.state_dir / "ledger.sqlite")


def _config_text(fed: fedlib.Federation, extra: dict[str, Any]) -> dict[str, Any]:
    cfg = fedlib.node_config(fed, "Leeds")
    data: dict[str, Any] = json.loads(json.dumps(tconfig._plain(cfg)))
    data.update(extra)
    return data


def test_config_grouping_rules(fed: fedlib.Federation, tmp_path: Path) -> None:
    def build(extra: dict[str, Any]) -> NodeConfig:
        data = _config_text(fed, extra)
        cfg = tconfig.build(NodeConfig, data, base=tmp_path, where="node.toml")
        node_config.validate(cfg, "node.toml")
        return cfg

    cfg = build({})
    assert cfg.accountant_of("ssda903") == cfg.accountant_of("cin") == CHILDREN
    assert cfg.accountant_of("health") == "population:patients"
    merged = build({"accountants": {"council": {"datasets": ["ssda903", "cin"]}}})
    assert merged.accountant_of("cin") == "council"
    with pytest.raises(tconfig.ConfigError, match="same people"):
        build({"accountants": {"looked_after": {"datasets": ["ssda903"]}}})
    with pytest.raises(tconfig.ConfigError, match="unknown key 'epsilon'"):
        build({"datasets": {"ssda903": {"epsilon": 5.0}}})
    with pytest.raises(tconfig.ConfigError, match="period and period_rho go together"):
        build({"privacy": {"delta": 1e-6, "lifetime_rho": 1.0, "period": "month"}})
    with pytest.raises(tconfig.ConfigError, match="give lifetime_rho"):
        build({"privacy": {"delta": 1e-6}})
    assert isinstance(cfg.accountants, MappingProxyType)
    assert isinstance(AccountantConfig(("cin",)), AccountantConfig)
