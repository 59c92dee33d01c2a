"""An answer says how many children its figures could not place (no header row)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

from tessera import templates
from tessera.coordinator.combine import data_notes
from tessera.coordinator.model import Loss, NodeAnswer
from tessera.node.service import _data_notes

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "templates"


def _template(name: str) -> templates.Template:
    return templates.load_toml((EXAMPLES / f"{name}.toml").read_text(encoding="utf-8"))


def _version(missing: int) -> SimpleNamespace:
    return SimpleNamespace(children_without_header=(("episodes", missing),))


def test_a_template_reading_dob_says_how_many_children_fall_in_its_unknown_cell() -> None:
    t = _template("cla-by-age-and-placement")
    (note,) = _data_notes(t, _version(12))
    assert note.startswith("about 10 children have episodes but no header row")
    assert "DOB" in note and "'Age not recorded'" in note
    assert _data_notes(t, _version(3))[0].startswith("fewer than 5 children")


def test_without_an_unknown_cell_the_note_says_they_are_left_out() -> None:
    t = _template("cla-by-age-and-placement")
    dims = tuple(
        dataclasses.replace(d, unknown=None) if hasattr(d, "unknown") else d for d in t.group_by
    )
    (note,) = _data_notes(dataclasses.replace(t, group_by=dims), _version(40))
    assert note.endswith("they are left out")


def test_no_note_when_every_child_has_a_header_or_no_header_field_is_read() -> None:
    t = _template("cla-by-age-and-placement")
    assert _data_notes(t, _version(0)) == []
    no_age = dataclasses.replace(t, group_by=t.group_by[1:])
    assert _data_notes(no_age, _version(12)) == []


def _answer(org: str, notes: tuple[str, ...]) -> NodeAnswer:
    return NodeAnswer(
        org,
        "d",
        "ssda903",
        1,
        "count_units",
        (),
        {},
        (),
        Loss("epsilon", 0.5),
        0.5,
        False,
        notes=notes,
    )


def test_combined_only_notes_never_name_an_organisation() -> None:
    t = _template("cla-by-age-and-placement")
    note = "about 10 children have episodes but no header row, so no DOB: they are left out"
    answers = [_answer("Leeds", (note,)), _answer("Bradford", ())]
    per_node = data_notes(t, answers)
    assert per_node == (f"Leeds: {note}",)
    combined_only = dataclasses.replace(
        t, access=dataclasses.replace(t.access, per_node_breakdown=False)
    )
    (only,) = data_notes(combined_only, answers)
    assert only.startswith("1 of the 2 contributing organisations") and "Leeds" not in only
