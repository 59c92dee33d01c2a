"""NHS numbers: the modulus-11 check, and synthetic numbers that pass it.

An NHS number is ten digits; the tenth is a check digit. Weight the first nine
digits 10, 9, ..., 2, sum, take the remainder mod 11 and subtract it from 11:
11 becomes 0 and 10 means the nine digits are never issued.

Synthetic numbers are drawn only from the 999 range, which the NHS reserves for
test data and never issues to a patient, so no synthetic record can carry a
real person's number.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# The check lives with the overlap protocol, which validates keys before blinding.
from tessera.overlap.nhs import check_digit as check_digit
from tessera.overlap.nhs import is_valid as is_valid
from tessera.synth.rng import Generator

_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)
TEST_PREFIX = "999"


def _valid_test_numbers() -> npt.NDArray[np.int64]:
    """Every valid number in the 999 test range, as integers, ascending."""
    body = np.arange(1_000_000, dtype=np.int64)  # the six digits after the prefix
    total = np.full(
        body.shape, sum(int(d) * w for d, w in zip(TEST_PREFIX, _WEIGHTS[:3], strict=True))
    )
    for k, weight in enumerate(_WEIGHTS[3:]):
        digit = (body // 10 ** (5 - k)) % 10
        total += digit * weight
    check = 11 - total % 11
    check[check == 11] = 0
    keep = check != 10
    prefix = int(TEST_PREFIX) * 10_000_000
    result: npt.NDArray[np.int64] = prefix + body[keep] * 10 + check[keep]
    return result


def capacity() -> int:
    """How many distinct synthetic numbers exist."""
    return int(_valid_test_numbers().size)


def generate(rng: Generator) -> str:
    """One valid synthetic NHS number (999 test range)."""
    while True:
        first_nine = TEST_PREFIX + f"{int(rng.integers(0, 1_000_000)):06d}"
        check = check_digit(first_nine)
        if check is not None:
            return first_nine + str(check)


def generate_unique(rng: Generator, n: int) -> list[str]:
    """`n` distinct valid synthetic NHS numbers, in random order."""
    pool = _valid_test_numbers()
    if n > pool.size:
        raise ValueError(f"only {pool.size} synthetic NHS numbers exist; asked for {n}")
    chosen = rng.choice(pool, size=n, replace=False)
    return [f"{v:010d}" for v in chosen.tolist()]


def transpose(number: str, rng: Generator) -> str:
    """The number with one pair of adjacent, differing digits swapped (a keying slip).

    A weighted mod-11 check catches every such swap, so the result is never valid
    if the input was. A number whose digits are all the same is returned unchanged.
    """
    positions = [i for i in range(len(number) - 1) if number[i] != number[i + 1]]
    if not positions:
        return number
    i = positions[int(rng.integers(0, len(positions)))]
    return number[:i] + number[i + 1] + number[i] + number[i + 2 :]


def recorded(
    numbers: list[str], rng: Generator, *, present: float, transposed: float = 0.01
) -> list[str]:
    """How one agency records each person's number: blank with probability 1 - `present`,
    otherwise the number, with a share `transposed` carrying a transposition."""
    n = len(numbers)
    has = rng.random(n) < present
    swap = rng.random(n) < transposed
    out: list[str] = []
    for number, h, s in zip(numbers, has.tolist(), swap.tolist(), strict=True):
        if not h:
            out.append("")
        elif s:
            out.append(transpose(number, rng))
        else:
            out.append(number)
    return out
