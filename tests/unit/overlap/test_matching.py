"""The counter's numpy matching equals a plain dict of elements, collisions included."""

from __future__ import annotations

import os
import random

from tessera.overlap import matching


def _sets(seed: int) -> dict[tuple[int, int], bytes]:
    rng = random.Random(seed)
    pool = [os.urandom(32) for _ in range(400)]
    # Elements sharing their first 64 bits: equal heads, different elements.
    pool += [pool[0][:8] + os.urandom(24) for _ in range(3)] if seed % 2 else []
    sets: dict[tuple[int, int], bytes] = {}
    for owner in range(3):
        picked = rng.sample(pool, 150)
        subsets = 4 if owner == 1 else 1
        for s in range(subsets):
            sets[(owner, s)] = b"".join(picked[s::subsets])
    sets[(2, 0)] += b""  # an empty sub-set elsewhere would be fine too
    return sets


def test_numpy_matching_equals_the_dict_one() -> None:
    for seed in range(6):
        sets = _sets(seed)
        want = matching._patterns_exact(sets, 1)
        assert matching.patterns(sets, 1) == want
        assert sum(want.values()) == len(
            {s[i : i + 32] for s in sets.values() for i in range(0, len(s), 32)}
        )
        assert any(mask.bit_count() > 1 for mask, _ in want)


def test_no_sets_no_patterns() -> None:
    assert matching.patterns({(0, 0): b""}, 0) == {}


def test_elements_sharing_leading_bits_are_still_told_apart() -> None:
    a = os.urandom(32)
    b = a[:8] + os.urandom(24)  # the same first 64 bits, a different element
    c = os.urandom(32)
    sets = {(0, 0): a + c, (1, 0): b + c, (1, 1): a}
    # a: in both, category 1; c: in both, category 0; b: only at party 1, category 0.
    assert matching.patterns(sets, 1) == {(3, 1): 1, (3, 0): 1, (2, 0): 1}
