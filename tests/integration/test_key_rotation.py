"""Rotating the data key: every version and stored answer is re-sealed under the new
key, the node serves the same answers under it, the old key no longer opens anything,
and running the rotation again is harmless."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tessera import audit, config, schemas
from tessera.cli.main import main as cli
from tessera.node import vault
from tessera.node.catalog import DatasetCatalog
from tessera.node.ingest import ingest_dataset
from tessera.node.main import start
from tessera.node.rekey import sealed_key_id
from tessera.node.vault import DataKey, EncryptionConfig, VaultError
from tests.support import federation as fedlib

P2 = {"period_start": "2025-04-01", "period_end": "2026-03-31"}


def test_rotation_reseals_everything_and_the_node_answers_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = fedlib.make(tmp_path)
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    vault.write_key_file(old_file, DataKey.generate())
    vault.write_key_file(new_file, DataKey.generate())
    old = vault.load_key(EncryptionConfig(key_file=old_file), {}, "t")
    new = vault.load_key(EncryptionConfig(key_file=new_file), {}, "t")
    cfg = dataclasses.replace(
        fedlib.node_config(fed, "Leeds"), encryption=EncryptionConfig(key_file=old_file)
    )
    sources = fedlib.write_council_files(tmp_path / "src")
    with vault.using_key(old):
        for name in cfg.datasets:
            ds = schemas.dataset(name)
            assert ds is not None
            ingest_dataset(ds, sources[name], cfg.data_dir, datetime(2026, 4, 1, tzinfo=UTC))
    path = tmp_path / "node.toml"
    path.write_text(config.dump(cfg))
    signed = fedlib.sign_template(fed.template("referrals-by-need-and-age"), fed.approvers[:2])

    node = start(cfg)
    try:
        stub = fedlib.node_stub(fed, node.port)
        first = stub.Execute(fedlib.execute_request(fed, signed, P2)).answer
    finally:
        node.stop(0)
    assert not first.from_cache

    assert cli(["node", "rotate-data-key", "--config", str(path), "--new-key", str(new_file)]) == 0
    assert "re-sealed 2 dataset versions and 1 stored answers" in capsys.readouterr().out
    sealed = sorted(cfg.data_dir.glob("*/v*.sealed"))
    assert len(sealed) == 2 and {sealed_key_id(p) for p in sealed} == {new.key_id}
    assert not list(cfg.data_dir.glob("*/.*.tmp"))
    with DatasetCatalog(cfg.data_dir, old) as catalog:
        v = catalog.latest("cin")
        assert v is not None
        with pytest.raises(VaultError, match="sealed under data key"):
            catalog.connect(v)

    # Interrupted or repeated: nothing left to do, nothing broken.
    assert cli(["node", "rotate-data-key", "--config", str(path), "--new-key", str(new_file)]) == 0
    assert "re-sealed 0 dataset versions and 0 stored answers" in capsys.readouterr().out

    rotated = dataclasses.replace(cfg, encryption=EncryptionConfig(key_file=new_file))
    node = start(rotated)
    try:
        stub = fedlib.node_stub(fed, node.port)
        again = stub.Execute(fedlib.execute_request(fed, signed, P2)).answer
    finally:
        node.stop(0)
    assert again.from_cache
    assert list(again.measures[0].values) == list(first.measures[0].values)
    ledger = cfg.state_dir / "ledger.sqlite"
    assert audit.verify(ledger, fed.node_key.public).ok

    # The node with the old key configured refuses to start, in one line.
    with pytest.raises(VaultError, match="sealed under data key") as e:
        start(cfg)
    assert "\n" not in str(e.value) and old.key_id in str(e.value)
