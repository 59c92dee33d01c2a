"""NHS number normalisation and the modulus-11 check (Hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tessera.overlap.nhs import check_digit, is_valid, normalise
from tessera.synth import nhs_number

nine = st.text("0123456789", min_size=9, max_size=9)


@st.composite
def valid(draw: st.DrawFn) -> str:
    first = draw(nine.filter(lambda s: check_digit(s) is not None))
    return first + str(check_digit(first))


def test_known_numbers() -> None:
    assert is_valid("9434765919") and normalise("943 476 5919") == "9434765919"
    assert not is_valid("9434765911")
    assert check_digit("943476591") == 9


@given(valid(), st.lists(st.sampled_from([" ", "-", "\t"]), max_size=4), st.data())
def test_separators_and_spreadsheet_floats_are_normalised(
    number: str, seps: list[str], data: st.DataObject
) -> None:
    s = number
    for sep in seps:
        i = data.draw(st.integers(0, len(s)))
        s = s[:i] + sep + s[i:]
    assert normalise(s) == number
    assert normalise(f"  {number}.0 ") == number


@given(valid(), st.integers(0, 9), st.integers(1, 9))
def test_every_single_digit_error_is_caught(number: str, pos: int, delta: int) -> None:
    wrong = number[:pos] + str((int(number[pos]) + delta) % 10) + number[pos + 1 :]
    assert normalise(wrong) is None


@given(valid(), st.integers(0, 8))
def test_every_adjacent_transposition_is_caught(number: str, pos: int) -> None:
    swapped = number[:pos] + number[pos + 1] + number[pos] + number[pos + 2 :]
    if swapped != number:
        assert normalise(swapped) is None


@given(st.one_of(st.none(), st.text(max_size=20)))
def test_anything_else_is_refused_or_valid(raw: str | None) -> None:
    out = normalise(raw)
    assert out is None or (is_valid(out) and len(out) == 10 and out.isascii())


def test_synth_shares_the_validator() -> None:
    assert nhs_number.is_valid is is_valid and nhs_number.check_digit is check_digit
