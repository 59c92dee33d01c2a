"""canonical.encode's fast path (the C JSON encoder) writes exactly what the RFC 8785
library writes, and leaves to the library every value where the two could differ."""

from __future__ import annotations

import random
from typing import Any

import pytest
import rfc8785

from tessera import canonical

_CHARS = (
    [chr(c) for c in range(0x20)]
    + list('"\\/abcZ09 ~\x7f')
    + [
        "\u00e9",
        "\u2028",
        "\u2029",
        "\ufeff",
        "\uffff",
        "\U0001f600",
        "\ue000",
    ]
)


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(rng.randint(0, 6)))


def _value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "bool", "none", "big", "float"]
    if depth < 4:
        kinds += ["dict", "dict", "list", "tuple"]
    k = rng.choice(kinds)
    if k == "str":
        return _text(rng)
    if k == "int":
        return rng.randint(-(2**53) + 1, 2**53 - 1) if rng.random() < 0.5 else rng.randint(-9, 9)
    if k == "big":
        return rng.choice([2**53 - 1, -(2**53) + 1, 2**53, -(2**53), 2**64])
    if k == "bool":
        return rng.random() < 0.5
    if k == "none":
        return None
    if k == "float":
        scale = 10.0 ** rng.randint(-8, 22)
        return rng.choice(
            [
                0.5,
                1.0,
                1e21,
                1e-7,
                -0.0,
                1e16,
                1e-4,
                9.999e-5,
                123456789.125,
                2.5e-300,
                rng.uniform(-scale, scale),
                round(rng.uniform(-scale, scale), rng.randint(0, 6)),
            ]
        )
    n = rng.randint(0, 4)
    if k == "dict":
        return {_text(rng): _value(rng, depth + 1) for _ in range(n)}
    items = [_value(rng, depth + 1) for _ in range(n)]
    return items if k == "list" else tuple(items)


def _library(value: Any) -> bytes | type[Exception]:
    try:
        return rfc8785.dumps(value)
    except Exception:
        return canonical.CanonicalError


def _ours(value: Any) -> bytes | type[Exception]:
    try:
        return canonical.encode(value)
    except canonical.CanonicalError:
        return canonical.CanonicalError


def test_random_values_encode_as_the_library_does() -> None:
    rng = random.Random(8785)
    fast = 0
    for _ in range(5000):
        v = _value(rng)
        assert _ours(v) == _library(v), repr(v)
        fast += canonical._plain(v)
    assert fast > 1000  # the fast path was exercised, not just the fallback


@pytest.mark.parametrize(
    "value",
    [
        {"\u00e9": 1, "z": 2, "\U0001f600": 3, "\ue000": 4},  # UTF-16 key order
        {"a": "\ud800"},  # a lone surrogate
        {1: "x"},  # a non-string key (json.dumps would write "1")
        {"a": 2**53},  # outside the safe integers
        {"a": [1.0, 1e21, 1e-7, 0.0001, 0.125, -12.345, 9999999999999998.0, 1e15 + 0.5]},
        {"a": float("inf")},
        {"a": float("nan")},
        {"a": {"b": {"c": ['\x00\x1f\b\t\n\f\r"\\']}}},
        [True, False, None, (), {}, ""],
    ],
)
def test_edge_values_encode_as_the_library_does(value: Any) -> None:
    assert _ours(value) == _library(value)


def test_subclasses_go_to_the_library() -> None:
    import enum

    class E(enum.IntEnum):
        A = 1

    class S(str, enum.Enum):
        X = "x"

    assert not canonical._plain({"a": E.A}) and not canonical._plain([S.X])
    assert _ours({"a": E.A, "b": [S.X]}) == _library({"a": E.A, "b": [S.X]})


def test_a_cycle_is_refused_not_looped_on() -> None:
    d: dict[str, Any] = {"a": []}
    d["a"].append(d)
    with pytest.raises(canonical.CanonicalError):
        canonical.encode(d)


def test_a_large_value_past_the_walk_budget_still_encodes_right() -> None:
    v = {"k": list(range(canonical._PLAIN_ITEMS + 10))}
    assert not canonical._plain(v)
    assert canonical.encode(v) == rfc8785.dumps(v)
