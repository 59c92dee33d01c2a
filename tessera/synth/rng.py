"""The one place where the synthetic region gets its random numbers.

FOR SYNTHETIC DATA ONLY. These generators make up children, episodes and
attendances for the demo and the tests. They are NEVER to be used for privacy
noise: differential-privacy noise comes from OpenDP's mechanisms alone, never
from numpy. Every other synth module takes a `Generator` as an argument and
does not create one.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Re-exported so that other synth modules can annotate with it without naming numpy's
# random module themselves (all use of it stays in this file).
Generator = np.random.Generator


def make_rng(seed: int, stream_name: str) -> Generator:
    """A reproducible generator for one named stream of synthetic data.

    Each stream gets its own SeedSequence (the seed plus a digest of the stream name),
    so adding draws to one stream never shifts the numbers of another.
    """
    if seed < 0:
        raise ValueError("seed must be non-negative")
    digest = hashlib.sha256(stream_name.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed, *words]))
