"""tessera.templates.parse keeps the public names it had before the section readers
and the canonical dict moved out (node/compiler, wire/vectors and tests import them)."""

from __future__ import annotations

from tessera.templates import canonical_dict, parse, release, scope


def test_moved_names_are_the_same_objects_at_the_old_path() -> None:
    homes = {
        scope: (
            "MAX_BOUND",
            "MAX_CELLS",
            "MAX_CODES",
            "MAX_DIMS",
            "MAX_FILTERS",
            "MAX_LABELS",
            "MAX_MONTHS",
            "MAX_PARAMS",
            "check_all_used",
            "group_by",
        ),
        release: ("MAX_ANALYSTS", "MAX_CAP", "MAX_EPSILON", "MAX_RHO"),
        canonical_dict: ("access_dict", "privacy_dict", "to_dict"),
    }
    for home, names in homes.items():
        for name in names:
            assert getattr(parse, name) is getattr(home, name), name
            assert name in parse.__all__
