"""The node config's `[secure_aggregation] roster`: a path resolved against the config
file's folder, optional, and no other key allowed in the table."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import tomli_w

from tessera import config
from tessera.node import config as node_config
from tests.support import federation as fedlib


def _write(tmp_path: Path, table: dict[str, str] | None) -> Path:
    fed = fedlib.make(tmp_path / "fed")
    data = tomllib.loads(config.dump(fedlib.node_config(fed, "Leeds")))
    data.pop("secure_aggregation", None)
    if table is not None:
        data["secure_aggregation"] = table
    path = tmp_path / "etc" / "leeds.toml"
    path.parent.mkdir()
    path.write_text(tomli_w.dumps(data))
    return path


def test_the_roster_path_is_optional_and_resolved_against_the_config(tmp_path: Path) -> None:
    assert node_config.load(_write(tmp_path, None)).secure_aggregation.roster is None
    cfg = node_config.load(_write(tmp_path / "b", {"roster": "r.json"}))
    assert cfg.secure_aggregation.roster == (tmp_path / "b" / "etc" / "r.json").resolve()


def test_an_unknown_key_in_the_table_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, {"rooster": "r.json"})
    with pytest.raises(config.ConfigError, match="rooster"):
        node_config.load(path)
