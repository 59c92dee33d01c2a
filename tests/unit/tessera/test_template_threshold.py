"""The `[access] threshold` of a template (secure aggregation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tessera import templates

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "templates"
TEXT = (EXAMPLE / "referrals-by-need-and-age.toml").read_text()


def _with(line: str) -> str:
    return TEXT.replace("per_node_breakdown = false", f"per_node_breakdown = false\n{line}")


def test_threshold_parses_and_round_trips() -> None:
    t = templates.load_toml(_with("threshold = 3"))
    assert t.access.threshold == 3
    again = templates.parse_canonical(templates.encode(t))
    assert again == t
    assert b'"threshold":3' in templates.encode(t)


def test_absent_threshold_keeps_the_digest() -> None:
    t = templates.load_toml(TEXT)
    assert t.access.threshold == 0
    assert b"threshold" not in templates.encode(t)
    assert templates.digest(t) == templates.digest(dataclasses.replace(t))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("threshold = 2", "less than the quorum"),  # quorum is 3
        ("threshold = 1", "between"),
        ('threshold = "3"', "integer"),
        ('threshold = 3\nparticipants = ["A", "B", "C", "D", "E", "F"]', "more than half"),
    ],
)
def test_bad_thresholds_are_refused(line: str, message: str) -> None:
    with pytest.raises(templates.TemplateError) as e:
        templates.load_toml(_with(line))
    assert message in str(e.value) and "threshold" in str(e.value)
