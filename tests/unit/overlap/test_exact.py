"""With noise off (the test-only path), the protocol's counts equal a brute-force join."""

from __future__ import annotations

import os

import pytest

from tessera.overlap import group
from tessera.overlap.protocol import Counter, Kind, OverlapQuery, Party, run_local
from tessera.overlap.synthetic import AGE_BRACKETS, Region, Rows, brute_force, region


@pytest.fixture(scope="module")
def synthetic() -> Region:
    return region(scale=0.02, seed=3)


def _run(
    query: OverlapQuery, inputs: list[Rows]
) -> tuple[list[int | None], dict[str, tuple[int, ...]]]:
    parties = [Party(query, i, rows) for i, rows in enumerate(inputs)]
    result = run_local(parties, Counter(query))
    assert result.exact and result.epsilon is None
    return [c.value for c in result.cells], result.not_linkable


def test_reference_template_5_is_exact(synthetic: Region) -> None:
    """Children with a police domestic-abuse notification also known to children's
    social care, by age bracket (from the social care record)."""
    q = OverlapQuery(os.urandom(16), ("police", "cin"), AGE_BRACKETS, Kind.ALL, category_party=1)
    inputs = [synthetic.police_da, synthetic.cin]
    counts, not_linkable = _run(q, inputs)
    want, want_nl = brute_force(q, inputs)
    assert counts == want
    assert sum(want) > 20  # the test means something
    assert {k: list(v) for k, v in not_linkable.items()} == want_nl
    assert want_nl["police"][0] > 0 and sum(want_nl["cin"]) > 0  # missing keys are counted


def test_three_agencies_at_least_two_is_exact(synthetic: Region) -> None:
    q = OverlapQuery(
        os.urandom(16), ("health", "police", "cin"), AGE_BRACKETS, Kind.AT_LEAST_K, 2, k=2
    )
    inputs = [synthetic.health_any, synthetic.police_any, synthetic.cin]
    counts, not_linkable = _run(q, inputs)
    want, want_nl = brute_force(q, inputs)
    assert counts == want
    assert want[-1] > 0  # units in two agencies but not in health: the extra cell
    assert {k: list(v) for k, v in not_linkable.items()} == want_nl


def test_three_of_three_and_four_agencies(synthetic: Region) -> None:
    q3 = OverlapQuery(os.urandom(16), ("health", "police", "cin"), AGE_BRACKETS, Kind.ALL, 2)
    inputs = [synthetic.health_any, synthetic.police_any, synthetic.cin]
    assert _run(q3, inputs)[0] == brute_force(q3, inputs)[0]
    q4 = OverlapQuery(
        os.urandom(16),
        ("health", "police", "cin", "police_da"),
        AGE_BRACKETS,
        Kind.AT_LEAST_K,
        2,
        k=3,
    )
    inputs4 = [*inputs, synthetic.police_da]
    assert _run(q4, inputs4)[0] == brute_force(q4, inputs4)[0]


def test_in_a_not_b_is_exact(synthetic: Region) -> None:
    """Under-fives with an injury attendance not known to social care, by age."""
    ages = ("0", "1", "2", "3", "4")
    q = OverlapQuery(os.urandom(16), ("health", "cin"), ages, Kind.A_NOT_B, 0, a=0, b=1)
    inputs = [synthetic.health_injury_u5, synthetic.cin]
    counts, not_linkable = _run(q, inputs)
    want, want_nl = brute_force(q, inputs)
    assert counts == want and sum(want) > 100
    assert {k: list(v) for k, v in not_linkable.items()} == want_nl


def test_keys_are_normalised_validated_and_deduplicated() -> None:
    q = OverlapQuery(os.urandom(16), ("a", "b"), ("x", "y"), Kind.ALL, 0)
    a: Rows = [
        ("943 476 5919", 0),  # spaces
        ("9434765870.0", 1),  # a spreadsheet float
        ("9434765919", 1),  # the same child again: one element per agency
        ("9434765911", 0),  # wrong check digit: not linkable
        ("4934765919", 0),  # transposed digits: not linkable
        ("", 1),
        (None, 1),
    ]
    b: Rows = [(" 943-476-5919 ", 0), ("9434765870", 0), ("9434765911", 0)]
    counts, not_linkable = _run(q, [a, b])
    assert counts == [1, 1]
    assert not_linkable == {"a": (2, 2), "b": (1,)}


@pytest.mark.parametrize(("backend", "threads"), [("openssl", 1), ("sodium", 1), ("sodium", 2)])
def test_exact_with_each_blinding_backend(
    synthetic: Region, backend: str, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small chunks, so the ring has many chunks per set and libsodium splits each."""
    monkeypatch.setattr(group, "BACKEND", backend)
    monkeypatch.setattr(group, "THREADS", threads)
    monkeypatch.setattr(group, "_MIN_SPLIT", 8)
    q = OverlapQuery(
        os.urandom(16), ("police", "cin"), AGE_BRACKETS, Kind.ALL, category_party=1, chunk_size=97
    )
    inputs = [synthetic.police_da, synthetic.cin]
    assert _run(q, inputs)[0] == brute_force(q, inputs)[0]
