"""`tessera node ingest --config`: the node config's data folder, key and sources."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import pytest

from tessera import config
from tessera.cli.main import main
from tessera.node import vault
from tessera.node.catalog import DatasetCatalog
from tessera.node.config import DatasetConfig, EncryptionConfig
from tests.support import federation as fedlib


def _config(tmp_path: Path, *, with_sources: bool) -> Path:
    fed = fedlib.make(tmp_path)
    cfg = fedlib.node_config(fed, "Leeds")
    files = fedlib.write_council_files(tmp_path / "src")["ssda903"]
    key_file = tmp_path / "data.key"
    vault.write_key_file(key_file, vault.DataKey.generate())
    sources = MappingProxyType({t: tuple(p) for t, p in files.items()}) if with_sources else None
    cfg = dataclasses.replace(
        cfg,
        datasets=MappingProxyType(
            {"ssda903": DatasetConfig(sources=sources or MappingProxyType({}))}
        ),
        encryption=EncryptionConfig(key_file=key_file),
    )
    path = tmp_path / "node.toml"
    path.write_text(config.dump(cfg))
    return path


def test_ingest_reads_sources_and_key_from_the_node_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, with_sources=True)
    assert main(["node", "ingest", "--config", str(path), "--dataset", "ssda903"], {}) == 0
    assert "version 1" in capsys.readouterr().out
    data_dir = tmp_path / "nodes" / "Leeds" / "data"
    key = vault.load_key(EncryptionConfig(key_file=tmp_path / "data.key"), {}, "test")
    with DatasetCatalog(data_dir, key=key) as catalog:
        version = catalog.latest("ssda903")
        assert version is not None
        rows = catalog.connect(version).cursor().execute("SELECT count(*) FROM header")
        assert rows.fetchone() == (5,)


def test_ingest_without_sources_or_tables_names_the_config_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, with_sources=False)
    assert main(["node", "ingest", "--config", str(path), "--dataset", "ssda903"], {}) == 2
    err = capsys.readouterr().err
    assert "datasets.ssda903.sources" in err and len(err.strip().splitlines()) <= 2
