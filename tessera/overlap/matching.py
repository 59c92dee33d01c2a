"""The counter's matching: how many fully blinded elements have each membership
pattern (which parties' sets hold them) and category, on numpy views of the packed
sets (about three times as fast as a dict of 32-byte objects at 10^6 elements)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping

import numpy as np

from tessera.overlap.group import POINT_BYTES

Sets = Mapping[tuple[int, int], bytes]  # (owner, sub-set) -> packed points


def patterns(sets: Sets, category_party: int) -> Tally[tuple[int, int]]:
    """(membership mask, category or -1) -> distinct elements with it. An element's
    category is its sub-set at the category party (-1 if that party lacks it)."""
    parts = [(o, s, d) for (o, s), d in sets.items() if d]
    if not parts:
        return Tally()
    rows = np.concatenate([np.frombuffer(d, np.uint8) for _, _, d in parts])
    words = rows.view(np.uint64).reshape(-1, POINT_BYTES // 8)
    sizes = [len(d) // POINT_BYTES for _, _, d in parts]
    bits = np.repeat(np.array([1 << o for o, _, _ in parts], np.int64), sizes)
    cats = np.repeat(
        np.array([s if o == category_party else -1 for o, s, _ in parts], np.int64), sizes
    )
    # Sort by the first 64 bits only; equal elements are then adjacent unless two
    # different ones share those bits (chance about n^2 / 2^65), which is checked.
    order = np.argsort(words[:, 0], kind="stable")
    w = words[order]
    same_head = w[1:, 0] == w[:-1, 0]
    same = (w[1:] == w[:-1]).all(axis=1)
    if (same_head & ~same).any():
        return _patterns_exact(sets, category_party)
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    masks = np.bitwise_or.reduceat(bits[order], starts)
    categories = np.maximum.reduceat(cats[order], starts)
    base = int(cats.max()) + 2  # codes mask * base + category + 1, one per cell
    codes, counts = np.unique(masks * base + (categories + 1), return_counts=True)
    return Tally(
        {(int(c) // base, int(c) % base - 1): int(n) for c, n in zip(codes, counts, strict=True)}
    )


def _patterns_exact(sets: Sets, category_party: int) -> Tally[tuple[int, int]]:
    """The same by a dict of elements: for sets whose elements share leading bits."""
    mask_of: dict[bytes, int] = {}
    category_of: dict[bytes, int] = {}
    for (owner, subset), data in sets.items():
        points = [data[i : i + POINT_BYTES] for i in range(0, len(data), POINT_BYTES)]
        bit = 1 << owner
        for p in points:
            mask_of[p] = mask_of.get(p, 0) | bit
        if owner == category_party:
            for p in points:
                category_of[p] = max(category_of.get(p, -1), subset)
    return Tally((m, category_of.get(p, -1)) for p, m in mask_of.items())
