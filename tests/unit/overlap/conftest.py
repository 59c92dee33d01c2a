"""The node's OpenDP noise, adapted to tessera.overlap's NoiseSource, and synthetic sets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from tessera.node import privacy
from tessera.overlap.protocol import DummyDraw
from tessera.templates.model import Privacy, Sensitivity


class NodeNoise:
    """What a node passes in: every draw and loss figure is OpenDP's, via node.privacy."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def dummies(self, epsilon: float, cells: int) -> DummyDraw:
        d = privacy.overlap_dummies(epsilon, cells)
        self.calls.append(("dummies", d.epsilon))
        return DummyDraw(
            counts=[int(c) for c in d.counts],
            shift=d.shift,
            scale=d.scale,
            variance=d.variance,
            epsilon=d.epsilon,
            delta=d.delta,
        )

    def counts(self, epsilon: float, exact: Sequence[int]) -> list[int]:
        (cal,) = privacy.calibrate(Privacy(epsilon=epsilon), {"n": Sensitivity(1.0, 1.0)})
        self.calls.append(("counts", cal.loss))
        noisy = privacy.add_noise(cal, np.asarray(exact, dtype=np.int64))
        return [int(v) for v in noisy.values]


@pytest.fixture
def node_noise() -> NodeNoise:
    return NodeNoise()
