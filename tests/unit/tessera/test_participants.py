"""`access.participants`: an optional, signed audience. Templates without it keep their
canonical form (and so their digests); with it, it round-trips and is checked."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera import canonical, templates
from tessera.templates import TemplateError
from tests.support import federation as fedlib

NAME = "referrals-by-need-and-age"


def _toml_with(participants: str) -> str:
    text = (fedlib.EXAMPLES / f"{NAME}.toml").read_text()
    return text.replace("per_node_breakdown = false", f"per_node_breakdown = false\n{participants}")


def test_unset_participants_leave_the_canonical_form_alone() -> None:
    t = templates.load_toml((fedlib.EXAMPLES / f"{NAME}.toml").read_text())
    assert t.access.participants == ()
    assert "participants" not in canonical.decode(templates.encode(t))["access"]


def test_participants_round_trip_sorted_and_change_the_digest() -> None:
    t = templates.load_toml(_toml_with('participants = ["Wakefield", "Bradford", "Leeds"]'))
    assert t.access.participants == ("Bradford", "Leeds", "Wakefield")
    again = templates.parse_canonical(templates.encode(t))
    assert again == t
    bare = dataclasses.replace(t, access=dataclasses.replace(t.access, participants=()))
    assert templates.digest(bare) != templates.digest(t)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('participants = ["Leeds", "Bradford"]', "fewer organisations than the quorum"),
        ('participants = ["Leeds", "Leeds", "York"]', "duplicate"),
        ("participants = []", "must not be empty"),
        ('participants = "Leeds"', "must be a list"),
    ],
)
def test_bad_participants_are_refused(line: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=problem):
        templates.load_toml(_toml_with(line))


@given(st.lists(st.sampled_from(["Leeds", "Bradford", "Wakefield", "York", "Hull"]), max_size=6))
def test_any_participant_list_parses_or_is_refused_cleanly(names: list[str]) -> None:
    listed = ", ".join(f'"{n}"' for n in names)
    try:
        t = templates.load_toml(_toml_with(f"participants = [{listed}]"))
    except TemplateError:
        assert len(set(names)) != len(names) or len(names) < 3
    else:
        assert t.access.participants == tuple(sorted(names))
        assert templates.parse_canonical(templates.encode(t)) == t
