from __future__ import annotations

import pytest

from tessera import keys


@pytest.fixture(scope="session")
def identities() -> dict[int, keys.SigningKey]:
    """Eight node identity keys, indexed 1..8 (made once: key generation is not under test)."""
    return {i: keys.SigningKey.generate() for i in range(1, 9)}
