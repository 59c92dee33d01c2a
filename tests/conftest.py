from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import federation as fedlib


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
