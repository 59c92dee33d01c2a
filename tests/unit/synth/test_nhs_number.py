from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tessera.synth import nhs_number
from tessera.synth.rng import make_rng

from .conftest import TRUST, Region

nine_digits = st.text(alphabet="0123456789", min_size=9, max_size=9)


def reference_check(first_nine: str) -> int | None:
    """The NHS's published rule, written out independently."""
    total = sum(int(first_nine[i]) * (10 - i) for i in range(9))
    check = 11 - (total % 11)
    return 0 if check == 11 else (None if check == 10 else check)


def test_published_example() -> None:
    assert nhs_number.is_valid("9434765919")
    assert not nhs_number.is_valid("9434765918")
    assert not nhs_number.is_valid("943 476 5919")
    assert not nhs_number.is_valid("943476591")
    assert not nhs_number.is_valid("94347659190")
    assert not nhs_number.is_valid("")
    assert not nhs_number.is_valid("943476591x")
    assert not nhs_number.is_valid("٩٤٣٤٧٦٥٩١٩")  # Arabic-Indic digits are not ASCII digits


@given(nine_digits)
def test_check_digit_matches_the_rule(first_nine: str) -> None:
    expected = reference_check(first_nine)
    assert nhs_number.check_digit(first_nine) == expected
    valid_endings = [d for d in "0123456789" if nhs_number.is_valid(first_nine + d)]
    assert valid_endings == ([] if expected is None else [str(expected)])


@given(st.text(max_size=14))
def test_checker_never_raises(text: str) -> None:
    assert isinstance(nhs_number.is_valid(text), bool)


@given(nine_digits, st.integers(0, 9), st.integers(1, 9))
def test_any_single_digit_error_is_caught(first_nine: str, pos: int, delta: int) -> None:
    check = nhs_number.check_digit(first_nine)
    if check is None:
        return
    number = first_nine + str(check)
    wrong = number[:pos] + str((int(number[pos]) + delta) % 10) + number[pos + 1 :]
    assert not nhs_number.is_valid(wrong)


@given(st.integers(0, 2**32 - 1))
def test_generated_numbers_are_valid_test_numbers(seed: int) -> None:
    rng = make_rng(seed, "nhs-test")
    number = nhs_number.generate(rng)
    assert nhs_number.is_valid(number)
    assert number.startswith(nhs_number.TEST_PREFIX)
    swapped = nhs_number.transpose(number, rng)
    assert swapped != number
    assert sorted(swapped) == sorted(number)
    assert sum(a != b for a, b in zip(swapped, number, strict=True)) == 2
    assert not nhs_number.is_valid(swapped)


def test_unique_batch() -> None:
    numbers = nhs_number.generate_unique(make_rng(1, "nhs-batch"), 20_000)
    assert len(set(numbers)) == 20_000
    assert all(nhs_number.is_valid(n) and n.startswith("999") for n in numbers)


def test_recorded_shares() -> None:
    rng = make_rng(3, "nhs-recorded")
    truth = nhs_number.generate_unique(rng, 20_000)
    held = nhs_number.recorded(truth, rng, present=0.6, transposed=0.01)
    present = [h for h in held if h]
    assert 0.57 < len(present) / len(held) < 0.63
    wrong = [h for h, t in zip(held, truth, strict=True) if h and h != t]
    assert 0.005 < len(wrong) / len(present) < 0.02
    assert not any(nhs_number.is_valid(w) for w in wrong)


def test_region_health_numbers_are_population_numbers_or_transpositions(region: Region) -> None:
    truth = set(region.population.nhs)
    held = {r["nhs_number"] for r in region.table(TRUST, "health", "ed_attendances")}
    held.discard("")
    invalid = {n for n in held if not nhs_number.is_valid(n)}
    assert held - invalid <= truth
    assert 0.003 < len(invalid) / len(held) < 0.025
    for n in invalid:  # each is one adjacent swap away from a real (synthetic) number
        swaps = {n[:i] + n[i + 1] + n[i] + n[i + 2 :] for i in range(9)}
        assert swaps & truth
