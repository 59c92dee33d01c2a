"""Choosing which children make up a cohort (in care, on a plan, in need ...).

Cohort sizes come from rates per 10,000 children; who is chosen follows an age
and sex mix, and leans towards more deprived children.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tessera.synth.rng import Generator

Index = npt.NDArray[np.int64]


def weighted_sample(
    rng: Generator, candidates: Index, weights: npt.NDArray[np.float64], k: int
) -> Index:
    """`k` distinct candidates, chosen with probability leaning on `weights`
    (Efraimidis-Spirakis keys), returned in ascending order."""
    if k >= candidates.size:
        return np.sort(candidates)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    keys = rng.exponential(size=candidates.size) / weights
    chosen = candidates[np.argpartition(keys, k - 1)[:k]]
    return np.sort(chosen)


def apportion(total: int, shares: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Split a whole number by shares (largest remainder), so the parts sum to `total`."""
    if total <= 0:
        return np.zeros(shares.size, dtype=np.int64)
    exact = total * shares / shares.sum()
    parts: npt.NDArray[np.int64] = np.floor(exact).astype(np.int64)
    short = total - int(parts.sum())
    if short > 0:
        order = np.argsort(-(exact - parts), kind="stable")
        parts[order[:short]] += 1
    return parts


def pick(
    rng: Generator,
    eligible: npt.NDArray[np.bool_],
    bracket: Index,
    male: npt.NDArray[np.bool_],
    weights: npt.NDArray[np.float64],
    total: int,
    age_mix: tuple[float, ...],
    male_share: float,
) -> Index:
    """About `total` eligible children (positions in the arrays), spread over age
    brackets and sex as `age_mix` and `male_share` say. A cell with too few eligible
    children gives what it has."""
    cells = np.array(
        [m * (male_share if is_male else 1.0 - male_share) for m in age_mix for is_male in (1, 0)]
    )
    counts = apportion(max(total, 0), cells)
    chosen: list[Index] = []
    for cell, k in enumerate(counts.tolist()):
        b, is_male = divmod(cell, 2)[0], cell % 2 == 0
        candidates = np.flatnonzero(eligible & (bracket == b) & (male == is_male)).astype(np.int64)
        chosen.append(weighted_sample(rng, candidates, weights[candidates], k))
    return np.sort(np.concatenate(chosen))
