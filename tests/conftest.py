from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support import federation as fedlib

# No time limits on examples: a first example pays for imports and warm caches, and on
# a loaded two-core machine a deadline would fail tests for timing, not behaviour
# (speed is the benchmarks' to measure).
settings.register_profile("tessera", deadline=None)
settings.load_profile("tessera")


@pytest.fixture(autouse=True, scope="session")
def _data_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Versions and ledger fields are always encrypted: code that is given no key
    (tools, most tests) takes it from TESSERA_DATA_KEY_FILE, here a fresh key file."""
    from tessera.node import vault

    path = tmp_path_factory.mktemp("data-key") / "data.key"
    vault.write_key_file(path, vault.DataKey.generate())
    old = os.environ.get(vault.ENV_KEY_FILE)
    os.environ[vault.ENV_KEY_FILE] = str(path)
    yield
    if old is None:
        os.environ.pop(vault.ENV_KEY_FILE, None)
    else:
        os.environ[vault.ENV_KEY_FILE] = old


@pytest.fixture
def fed(tmp_path: Path) -> fedlib.Federation:
    return fedlib.make(tmp_path)


@pytest.fixture
def running_node(fed: fedlib.Federation) -> Iterator[tuple[fedlib.Federation, object]]:
    from tessera.node.main import start

    cfg = fedlib.node_config(fed, "Leeds")
    fedlib.ingest_council(fed, cfg)
    node = start(cfg)
    try:
        yield fed, node
    finally:
        node.stop(0)
