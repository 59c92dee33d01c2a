"""NHS numbers as a linkage key: normalisation and the modulus-11 check.

An NHS number is ten digits; the tenth is a check digit. Weight the first nine
digits 10, 9, ..., 2, sum, take the remainder mod 11 and subtract it from 11:
11 becomes 0, and 10 means the nine digits are never issued. The weighted check
catches every single-digit error and every transposition of two adjacent,
differing digits.

Records hold the number as people typed it: with spaces ("943 476 5919"),
hyphens, surrounding blanks, or as a float from a spreadsheet ("9434765919.0").
`normalise` accepts exactly those forms and nothing else; a value it refuses is
"not linkable" and is counted, never silently dropped.
"""

from __future__ import annotations

_DIGITS = frozenset("0123456789")
_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)
_SEPARATORS = str.maketrans("", "", " -\t")


def check_digit(first_nine: str) -> int | None:
    """The check digit for nine digits, or None if those digits are never issued."""
    if len(first_nine) != 9 or not set(first_nine) <= _DIGITS:
        raise ValueError("expected nine digits")
    total = sum(int(d) * w for d, w in zip(first_nine, _WEIGHTS, strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid(s: str) -> bool:
    """True if `s` is exactly ten ASCII digits with a correct check digit."""
    if len(s) != 10 or not set(s) <= _DIGITS:
        return False
    check = check_digit(s[:9])
    return check is not None and check == int(s[9])


def normalise(raw: str | None) -> str | None:
    """The ten-digit NHS number in `raw`, or None if `raw` holds no valid one.

    Spaces, tabs and hyphens are removed, and a trailing ".0" (a spreadsheet
    round-trip) is dropped; what remains must be ten ASCII digits whose check
    digit is right.
    """
    if raw is None:
        return None
    s = raw.strip().translate(_SEPARATORS)
    if s.endswith(".0"):
        s = s[:-2]
    return s if is_valid(s) else None
