"""The template language: reading, the canonical form and its digest, refusal of
unsafe or malformed templates (naming the field at fault) and parameter binding."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import string
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera import schemas
from tessera.templates import (
    ParamError,
    Template,
    TemplateError,
    bind,
    digest,
    digest_of_bytes,
    encode,
    load_toml,
    parse_canonical,
)
from tessera.templates.model import BandsDim, CategoriesDim, Choice, DateParam, IntParam
from tessera.templates.params import _quote, to_json
from tessera.templates.parse import parse, to_dict

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "templates"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.toml"))
REFERENCE_1 = EXAMPLES / "cla-by-age-and-placement.toml"
REFERENCE_2 = EXAMPLES / "referrals-by-need-and-age.toml"
KEY = "ed25519:" + "0" * 64
KEY_2 = "ed25519:" + "ab" * 32


def example(path: Path) -> Template:
    return load_toml(path.read_text(encoding="utf-8"))


def access(**over: Any) -> dict[str, Any]:
    return {
        "analysts": [{"name": "Regional analyst", "key": KEY}],
        "expires": "2027-12-31",
        "quorum": 1,
        "per_node_breakdown": False,
        **over,
    }


def date_param(lo: str = "2015-04-01", hi: str = "2026-03-31", desc: str = "") -> dict[str, Any]:
    return {"type": "date", "min": lo, "max": hi, "description": desc}


def health(**over: Any) -> dict[str, Any]:
    """A small valid template over health.ed_attendances, in canonical-dict shape."""
    d: dict[str, Any] = {
        "id": "ed-test",
        "version": 1,
        "title": "ED attendances",
        "purpose": "service_planning",
        "description": "",
        "legal_basis": "UK GDPR Art. 6(1)(e)",
        "data": {
            "dataset": "health",
            "schema_version": 1,
            "source": "ed_attendances",
            "privacy_unit": "nhs_number",
        },
        "parameters": {
            "start": date_param(),
            "end": date_param(),
            "category": {"type": "enum", "values": ["1", "2"], "description": ""},
        },
        "filters": [
            {"kind": "in", "column": "attendance_category", "param": "category"},
            {"kind": "between", "column": "arrival_date", "start": "start", "end": "end"},
        ],
        "group_by": [
            {
                "name": "age",
                "kind": "bands",
                "bands": [
                    {"label": "0-4", "min": 0, "max": 4},
                    {"label": "5-17", "min": 5, "max": 17},
                ],
                "column": "age_years",
            }
        ],
        "statistic": {
            "kind": "sum",
            "column": "age_years",
            "lower": 0,
            "upper": 20,
            "max_records_per_unit": 2,
        },
        "privacy": {"epsilon": 0.5},
        "output": {"min_count": 5, "round_to": 1},
        "access": access(),
    }
    d.update(over)
    return d


# Templates that between them use every filter, dimension and statistic kind and every
# optional field, with values away from the defaults.
RICH_REFERRALS: dict[str, Any] = {
    "id": "rich-referrals-2",
    "version": 7,
    "title": "Référrals — a rich template",
    "purpose": "research",
    "description": "Every kind of filter over CIN referrals.\nSecond line.",
    "legal_basis": "Children Act 1989 s.17",
    "data": {
        "dataset": "cin",
        "schema_version": 1,
        "source": "referrals",
        "privacy_unit": "child_id",
    },
    "parameters": {
        "census": date_param(desc="Census date"),
        "from": date_param("2016-01-01", "2025-12-31", "First day"),
        "source": {"type": "enum", "values": ["1A", "2B", "9"], "description": "Who referred"},
        "until": date_param(),
    },
    "filters": [
        {"kind": "in", "column": "referral_source", "param": "source"},
        {"kind": "in", "column": "primary_need", "values": ["N1", "N2", "N3"]},
        {"kind": "equals", "column": "nfa", "value": False},
        {"kind": "between", "column": "referral_date", "start": "from", "end": "until"},
        {"kind": "between", "column": "referral_date", "start": "2015-01-01", "end": "2030-12-31"},
        {"kind": "age", "birth_column": "dob", "min": 0, "max": 17, "at_column": "referral_date"},
        {"kind": "age", "birth_column": "dob", "min": 1, "max": 18, "at": "census"},
        {"kind": "age", "birth_column": "dob", "min": 2, "max": 19, "at": "2024-03-31"},
    ],
    "group_by": [
        {
            "name": "sex",
            "kind": "categories",
            "column": "sex",
            "categories": [{"label": "Male", "codes": ["1"]}],
            "other": "Not male",
            "unknown": "Sex not recorded",
        },
        {
            "name": "age",
            "kind": "bands",
            "bands": [
                {"label": "5-9", "min": 5, "max": 9},
                {"label": "0-4", "min": 0, "max": 4},
            ],
            "birth_column": "dob",
            "at": "census",
            "unknown": "Age not recorded",
        },
        {
            "name": "month",
            "kind": "months",
            "column": "referral_date",
            "first": "2023-02",
            "last": "2024-01",
        },
    ],
    "statistic": {
        "kind": "count_units",
        "max_cells_per_unit": 2,
        "choose": "latest",
        "by": "referral_date",
    },
    "privacy": {"rho": 0.25},
    "output": {"min_count": 10, "round_to": 5},
    "access": {
        "analysts": [{"name": "Analyst one", "key": KEY}, {"name": "Analyst two", "key": KEY_2}],
        "expires": "2028-02-29",
        "quorum": 2,
        "per_node_breakdown": True,
    },
}
RICH_EPISODES: dict[str, Any] = {
    **RICH_REFERRALS,
    "id": "rich-episodes",
    "data": {
        "dataset": "cin",
        "schema_version": 1,
        "source": "cin_episodes",
        "privacy_unit": "child_id",
    },
    "parameters": {"on": date_param()},
    "filters": [
        {"kind": "active_on", "start_column": "start_date", "end_column": "end_date", "on": "on"},
        {
            "kind": "active_on",
            "start_column": "start_date",
            "end_column": "end_date",
            "on": "2020-02-02",
        },
    ],
    "group_by": [
        {
            "name": "age_at_start",
            "kind": "bands",
            "bands": [{"label": "all", "min": 0, "max": 17}],
            "birth_column": "dob",
            "at_column": "start_date",
        },
        {
            "name": "age_then",
            "kind": "bands",
            "bands": [{"label": "young", "min": 0, "max": 9}],
            "birth_column": "dob",
            "at": "2021-03-31",
        },
    ],
    "statistic": {"kind": "count_records", "max_records_per_unit": 4},
}
RICH_ATTENDANCE: dict[str, Any] = {
    **RICH_REFERRALS,
    "id": "rich-attendance",
    "purpose": "statutory_return",
    "data": {
        "dataset": "education",
        "schema_version": 1,
        "source": "attendance",
        "privacy_unit": "upn",
    },
    "parameters": {},
    "filters": [
        {"kind": "range", "column": "sessions_possible", "min": 1, "max": 400},
        {"kind": "in", "column": "term", "values": ["AUTUMN", "SPRING"]},
        {"kind": "in", "column": "academic_year", "values": ["2023/24"]},
    ],
    "group_by": [
        {
            "name": "sen",
            "kind": "categories",
            "column": "sen",
            "categories": [
                {"label": "Support", "codes": ["SEN_SUPPORT", "EHC_PLAN"]},
                {"label": "None", "codes": ["NONE"]},
            ],
        }
    ],
    "statistic": {
        "kind": "mean",
        "column": "sessions_missed",
        "lower": -10,
        "upper": 200,
        "max_records_per_unit": 3,
    },
    "privacy": {"epsilon": 1.5},
}
RICH = {"referrals": RICH_REFERRALS, "episodes": RICH_EPISODES, "attendance": RICH_ATTENDANCE}


def all_templates() -> Iterator[tuple[str, Template]]:
    for p in EXAMPLE_FILES:
        yield p.name, example(p)
    for name, d in RICH.items():
        yield name, parse(d)


ALL_TEMPLATES = dict(all_templates())


# --- reading and the canonical form ------------------------------------------------------


def test_reference_templates_load() -> None:
    names = {p.name for p in EXAMPLE_FILES}
    assert {REFERENCE_1.name, REFERENCE_2.name} <= names
    t1, t2 = example(REFERENCE_1), example(REFERENCE_2)
    assert (t1.dataset, t1.source, t1.privacy_unit) == ("ssda903", "episodes", "CHILD")
    assert t1.shape == (6, 4)
    assert t1.group_by[0].labels[-1] == "Age not recorded"
    assert t1.group_by[1].labels == ("Fostering", "Residential", "Supported", "Other")
    # Stock on a date: the latest-starting episode decides a child's cell.
    assert (t1.statistic.choose, t1.statistic.by) == (Choice.LATEST, "DECOM")
    assert t1.privacy.epsilon == 0.5 and t1.privacy.rho is None
    assert t1.parameter("on_date") == DateParam(
        "on_date", date(2015, 3, 31), date(2026, 3, 31), "The date on which children are counted."
    )
    assert (t2.dataset, t2.source, t2.privacy_unit) == ("cin", "referrals", "child_id")
    # 9 needs + "Need not recorded" x 5 age brackets + "Age not recorded": no referral dropped.
    assert t2.shape == (10, 6) and t2.n_cells == 60
    assert t2.group_by[0].labels[-1] == "Need not recorded"
    assert t2.group_by[1].labels[-1] == "Age not recorded"
    assert t2.statistic.max_records_per_unit == 3
    assert t2.privacy.rho == 0.125 and t2.privacy.epsilon is None


def test_rich_templates_are_canonical_dicts() -> None:
    for d in RICH.values():
        assert to_dict(parse(d)) == d


@pytest.mark.parametrize("name", sorted(ALL_TEMPLATES))
def test_canonical_round_trip(name: str) -> None:
    t = ALL_TEMPLATES[name]
    data = encode(t)
    assert parse_canonical(data) == t
    assert parse(to_dict(t)) == t
    assert encode(parse_canonical(data)) == data
    # Canonical: sorted keys, no insignificant whitespace, UTF-8 (not \u escapes).
    assert data == json.dumps(
        json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


@pytest.mark.parametrize("name", sorted(ALL_TEMPLATES))
def test_digest_is_stable(name: str) -> None:
    t = ALL_TEMPLATES[name]
    d = digest(t)
    assert re.fullmatch(r"[0-9a-f]{64}", d)
    assert digest(parse_canonical(encode(t))) == d
    assert digest(parse(copy.deepcopy(to_dict(t)))) == d
    assert digest_of_bytes(encode(t)) == d
    # Domain-separated: not the bare hash of the encoding.
    assert hashlib.sha256(encode(t)).hexdigest() != d


def test_digests_of_distinct_templates_differ() -> None:
    assert len({digest(t) for t in ALL_TEMPLATES.values()}) == len(ALL_TEMPLATES)


def _leaves(x: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, (*path, i))
    else:
        yield path, x


def _set(d: Any, path: tuple[Any, ...], value: Any) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


_ALL_CODES = sorted(
    {
        c
        for ds in schemas.DATASETS.values()
        for t in ds.tables
        for col in t.columns
        for c in col.codes
    }
)
_ALL_COLUMNS = sorted(
    {col.name for ds in schemas.DATASETS.values() for t in ds.tables for col in t.columns}
)


_CHOICES = [c.value for c in Choice]


def _alternatives(v: Any) -> list[Any]:
    """Values to try in place of one leaf; the first that still parses is used."""
    if isinstance(v, bool):
        return [not v]
    if isinstance(v, int):
        return [v + 1, v - 1]
    if isinstance(v, float):
        return [v / 2, v * 2]
    assert isinstance(v, str)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
        d = date.fromisoformat(v)
        return [(d + timedelta(days=1)).isoformat(), (d - timedelta(days=1)).isoformat()]
    if re.fullmatch(r"\d{4}-\d{2}", v):
        k = int(v[:4]) * 12 + int(v[5:]) - 1
        return [f"{(k + i) // 12:04d}-{(k + i) % 12 + 1:02d}" for i in (1, -1)]
    if v.startswith("ed25519:"):
        return ["ed25519:" + "12" * 32]
    return [v + "x", v[:-1], *schemas.PURPOSES, *_ALL_COLUMNS, *_ALL_CODES, *_CHOICES]


# Leaves that a single change cannot always alter while keeping the template valid:
# the data model's fixed choices, kind and type tags, references to parameters
# (renaming one side leaves it dangling or unused), a column that is the only one of
# its type, a code when every other code is already used, a band edge that touches
# its neighbour.
_FIXED_LEAF = re.compile(
    r"^(data\.(dataset|schema_version|source|privacy_unit)"
    r"|.*\.(kind|type|column)"
    r"|filters\.\d+\.(param|start|end|on|at)"
    r"|group_by\.\d+\.(at|categories\.\d+\.codes\.\d+|bands\.\d+\.(min|max))"
    # Overlaps: the datasets and how they are matched are fixed choices; their quorum
    # must be the number of datasets and they have no per-node answers.
    r"|overlap\.datasets\.\d+\.(dataset|schema_version|source|linkage_key"
    r"|filters\.\d+\.(param|start|end|on|at))|group_by\.\d+\.birth_column"
    r"|statistic\.(match|categories_from|b)|access\.(quorum|per_node_breakdown))$"
)


@pytest.mark.parametrize("name", sorted(ALL_TEMPLATES))
def test_changing_any_one_field_changes_the_digest(name: str) -> None:
    t = ALL_TEMPLATES[name]
    base = to_dict(t)
    base_digest = digest(t)
    unchanged = []
    n_changed = 0
    for path, value in _leaves(base):
        for alt in (a for a in _alternatives(value) if a != value):
            mutated = copy.deepcopy(base)
            _set(mutated, path, alt)
            try:
                u = parse(mutated)
            except TemplateError:
                continue
            # The change survives parsing exactly, and the digest moves.
            assert to_dict(u) == mutated, path
            assert u != t, path
            assert digest(u) != base_digest, path
            n_changed += 1
            break
        else:
            unchanged.append(".".join(map(str, path)))
    assert [p for p in unchanged if not _FIXED_LEAF.match(p)] == []
    # An overlap names each dataset by several fixed leaves (dataset, source, key...).
    share = 0.5 if "overlap" in base else 0.6
    assert n_changed >= share * (n_changed + len(unchanged))


TOML_REFERENCE_1_REORDERED = """
# The same template as examples/templates/cla-by-age-and-placement.toml, written
# with its tables and keys in another order, other quoting, spacing and comments.

[access]
per_node_breakdown=true
quorum   =   3
expires = 2027-12-31   # a TOML date
  [[access.analysts]]
  key = 'ed25519:0000000000000000000000000000000000000000000000000000000000000000'
  name = "Regional analyst"

[output]
round_to = 1
min_count = 5

[privacy]
epsilon = 5e-1

[statistic]
by = "DECOM"
max_cells_per_unit = 1
choose = 'latest'
kind = "count_units"

[parameters.on_date]
description = "The date on which children are counted."
max = "2026-03-31"    # a quoted date reads the same
min = 2015-03-31
type = "date"

[data]
privacy_unit = "CHILD"
source = "episodes"
schema_version = 1
dataset = "ssda903"

[[filters]]
on = "on_date"
end_column = "DEC"
start_column = "DECOM"
kind = "active_on"

[[group_by]]
at = "on_date"
unknown = "Age not recorded"
birth_column = "DOB"
kind = "bands"
name = "age_bracket"

  [[group_by.bands]]
  max = 0
  min = 0
  label = "under 1"

  [[group_by.bands]]
  label = "1-4"
  min = 1
  max = 4

  [[group_by.bands]]
  label = "5-9"
  max = 9
  min = 5

  [[group_by.bands]]
  label = "10-15"
  min = 10
  max = 15

  [[group_by.bands]]
  label = "16 and over"
  min = 16
  max = 25

[[group_by]]
categories = [
    {codes = ["U1", "U2", "U3", "U4", "U5", "U6"], label = "Fostering"},
    {codes = ["K2", "R1", "P3", "S1"], label = "Residential"},
    {codes = ["H5", "K3", "P2"], label = "Supported"},
]
other = "Other"
column = "PLACE"
kind = "categories"
name = "placement"
"""


def test_key_order_whitespace_and_comments_do_not_change_the_digest() -> None:
    original = example(REFERENCE_1)
    doc = REFERENCE_1.read_text(encoding="utf-8")
    # Top-level keys come before the first table in TOML; JSON strings are TOML strings.
    top = "\n".join(
        f"{k} = {json.dumps(getattr(original, k))}"
        for k in ("legal_basis", "description", "title", "purpose", "version", "id")
    )
    t = load_toml(top + "\n" + TOML_REFERENCE_1_REORDERED)
    assert t == original
    assert digest(t) == digest(original)
    assert encode(t) == encode(original)
    # Whitespace and comments alone.
    noisy = "\n".join(
        f"  {ln}   # note" if ln.startswith("quorum") else ln for ln in doc.splitlines()
    )
    assert digest(load_toml("# header\n\n" + noisy + "\n\n# trailer\n")) == digest(original)
    # A parameter table's keys in another order (the dict is sorted when encoded).
    d = to_dict(original)
    d["parameters"] = {k: dict(reversed(v.items())) for k, v in d["parameters"].items()}
    assert digest(parse(dict(reversed(d.items())))) == digest(original)
    # But the order of list entries is part of the template.
    d = to_dict(original)
    d["group_by"] = list(reversed(d["group_by"]))
    assert digest(parse(d)) != digest(original)


def _respaced(data: bytes) -> bytes:
    return json.dumps(json.loads(data), sort_keys=True, ensure_ascii=False).encode()


def _reordered(data: bytes) -> bytes:
    def rev(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: rev(v) for k, v in reversed(sorted(x.items()))}
        if isinstance(x, list):
            return [rev(v) for v in x]
        return x

    return json.dumps(rev(json.loads(data)), separators=(",", ":"), ensure_ascii=False).encode()


def _with(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """Canonical JSON of an edited dict: canonical JSON, but not a canonical template."""
    d = json.loads(data)
    edit(d)
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


NON_CANONICAL: dict[str, Callable[[bytes], bytes]] = {
    "extra space": lambda b: b.replace(b'":', b'": ', 1),
    "spaced separators": _respaced,
    "trailing newline": lambda b: b + b"\n",
    "leading space": lambda b: b" " + b,
    "byte order mark": lambda b: b"\xef\xbb\xbf" + b,
    "reordered keys": _reordered,
    "ascii escapes": lambda b: json.dumps(
        json.loads(b), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode(),
    "escaped space": lambda b: b.replace(b"Children Act", b"Children\\u0020Act", 1),
    "duplicate key": lambda b: b[:1] + b'"id":"x",' + b[1:],
    # RFC 8785 writes a number in its shortest form: 1.50 (or 1.0 for 1) is not canonical.
    "epsilon with a trailing zero": lambda b: b.replace(b'"epsilon":1.5', b'"epsilon":1.50'),
    "default description left out": lambda b: _with(b, lambda d: d.pop("description")),
    "default filters left out": lambda b: _with(b, lambda d: d.pop("filters")),
    "not utf-8": lambda b: b.replace("é".encode(), "é".encode("latin-1"), 1),
    "NaN": lambda b: b.replace(b'"epsilon":1.5', b'"epsilon":NaN'),
    "Infinity": lambda b: b.replace(b'"epsilon":1.5', b'"epsilon":Infinity'),
    "epsilon as an exponent": lambda b: b.replace(b'"epsilon":1.5', b'"epsilon":15e-1'),
    "too large": lambda b: _with(b, lambda d: d.update(description="x" * 300_000)),
    "not json": lambda b: b[:-1],
}


@pytest.mark.parametrize("change", sorted(NON_CANONICAL))
def test_non_canonical_bytes_are_refused(change: str) -> None:
    data = encode(parse(RICH_ATTENDANCE))
    assert parse_canonical(data) == parse(RICH_ATTENDANCE)
    bad = NON_CANONICAL[change](data)
    assert bad != data
    with pytest.raises(TemplateError) as e:
        parse_canonical(bad)
    assert e.value.field == "template"


# --- unsafe and malformed templates -------------------------------------------------------

Edit = Callable[[dict[str, Any]], Any]


def _set_path(path: str, value: Any) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        _set(d, tuple(keys), value)

    return edit


def _stat(**s: Any) -> Edit:
    return lambda d: d.update(statistic=s)


def _dims(*dims: dict[str, Any]) -> Edit:
    return lambda d: d.update(group_by=list(dims))


def _bands(n: int, name: str = "age") -> dict[str, Any]:
    return {
        "name": name,
        "kind": "bands",
        "column": "age_years",
        "bands": [{"label": f"b{i}", "min": i, "max": i} for i in range(n)],
    }


def _cats(*cats: tuple[str, list[str]], other: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "category",
        "kind": "categories",
        "column": "attendance_category",
        "categories": [{"label": lab, "codes": codes} for lab, codes in cats],
    }
    if other is not None:
        d["other"] = other
    return d


def _months(first: str, last: str) -> dict[str, Any]:
    return {
        "name": "month",
        "kind": "months",
        "column": "arrival_date",
        "first": first,
        "last": last,
    }


def _filters(*fs: dict[str, Any]) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        d["filters"] = [*d["filters"], *fs]

    return edit


def _pop(path: str) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        *head, last = path.split(".")
        for k in head:
            d = d[k]
        del d[last]

    return edit


def _pop_filter(i: int) -> Edit:
    return lambda d: d["filters"].pop(i)


_SQL = "1'); DROP TABLE ed_attendances; --"
_LONG = "x" * 10_000
_SUM = {"kind": "sum", "column": "age_years", "max_records_per_unit": 1}

UNSAFE: dict[str, tuple[Edit, str]] = {
    # Columns.
    "unknown filter column": (
        _filters({"kind": "equals", "column": "secret", "value": True}),
        "filters[2].column",
    ),
    "unknown dimension column": (_dims({**_bands(2), "column": "AGE"}), "group_by[0].column"),
    "unknown statistic column": (
        _stat(**{**_SUM, "column": "nope"}, lower=0, upper=1),
        "statistic.column",
    ),
    "column of another source": (
        _filters({"kind": "equals", "column": "nfa", "value": True}),
        "filters[2].column",
    ),
    "range over a date column": (
        _filters({"kind": "range", "column": "arrival_date", "min": 0, "max": 1}),
        "filters[2].column",
    ),
    "equals over a code column": (
        _filters({"kind": "equals", "column": "attendance_category", "value": True}),
        "filters[2].column",
    ),
    "between over an int column": (
        _filters({"kind": "between", "column": "age_years", "start": "start", "end": "end"}),
        "filters[2].column",
    ),
    "sum of a bool column": (
        _stat(**{**_SUM, "column": "injury"}, lower=0, upper=1),
        "statistic.column",
    ),
    "categories over an int column": (
        _dims({**_cats(("a", ["1"])), "column": "age_years"}),
        "group_by[0].column",
    ),
    "months over a code column": (
        _dims({**_months("2024-01", "2024-02"), "column": "attendance_category"}),
        "group_by[0].column",
    ),
    # Bounds.
    "sum without bounds": (_stat(**_SUM), "statistic.upper"),
    "sum with only a lower bound": (_stat(**_SUM, lower=0), "statistic.upper"),
    "mean with only an upper bound": (
        _stat(**{**_SUM, "kind": "mean"}, upper=5),
        "statistic.upper",
    ),
    "sum lower above upper": (_stat(**_SUM, lower=5, upper=4), "statistic.lower"),
    "sum bounds both zero": (_stat(**_SUM, lower=0, upper=0), "statistic.upper"),
    "sum bound not finite": (_stat(**_SUM, lower=0, upper=math.inf), "statistic.upper"),
    "sum bound a float": (_stat(**_SUM, lower=0, upper=1.5), "statistic.upper"),
    "sum bound too large": (_stat(**_SUM, lower=0, upper=10**12), "statistic.upper"),
    "sum without a record cap": (
        _stat(kind="sum", column="age_years", lower=0, upper=1),
        "statistic.max_records_per_unit",
    ),
    "record cap zero": (
        _stat(kind="count_records", max_records_per_unit=0),
        "statistic.max_records_per_unit",
    ),
    "record cap huge": (
        _stat(kind="count_records", max_records_per_unit=10**6),
        "statistic.max_records_per_unit",
    ),
    "cell cap missing": (_stat(kind="count_units"), "statistic.max_cells_per_unit"),
    "cell cap a bool": (
        _stat(kind="count_units", max_cells_per_unit=True),
        "statistic.max_cells_per_unit",
    ),
    "unknown statistic": (_stat(kind="median"), "statistic.kind"),
    "reserved statistic overlap_count": (_stat(kind="overlap_count"), "statistic.kind"),
    "statistic with a stray key": (
        _stat(kind="count_records", max_records_per_unit=1, lower=0),
        "statistic.lower",
    ),
    "range min above max": (
        _filters({"kind": "range", "column": "age_years", "min": 5, "max": 4}),
        "filters[2].min",
    ),
    # Domain size.
    "months over 200 months": (_dims(_months("2000-01", "2016-08")), "group_by[0].last"),
    "months first after last": (_dims(_months("2024-02", "2024-01")), "group_by[0].first"),
    "month not a month": (_dims(_months("2024-13", "2024-12")), "group_by[0].first"),
    "month with a space": (_dims(_months("2024-01", "2024-1 ")), "group_by[0].last"),
    "month with non-ASCII digits": (_dims(_months("２０２４-01", "2024-02")), "group_by[0].first"),
    "three dimensions of 1000 bands": (
        _dims(_bands(1000, "a"), _bands(1000, "b"), _bands(1000, "c")),
        "group_by",
    ),
    "two dimensions of 101 bands": (_dims(_bands(101, "a"), _bands(101, "b")), "group_by"),
    "1001 bands": (_dims(_bands(1001)), "group_by[0].bands"),
    "four dimensions": (_dims(*(_bands(1, n) for n in "abcd")), "group_by"),
    "10^6 categories": (
        _dims({**_cats(), "categories": [{"label": "a", "codes": ["1"]}] * 10**6}),
        "group_by[0].categories",
    ),
    "10^6 codes": (_dims(_cats(("a", ["1"] * 10**6))), "group_by[0].categories[0].codes"),
    "no categories": (_dims(_cats()), "group_by[0].categories"),
    "no bands": (_dims(_bands(0)), "group_by[0].bands"),
    "empty code list": (_dims(_cats(("a", []))), "group_by[0].categories[0].codes"),
    "same dimension name twice": (_dims(_bands(1), _bands(2)), "group_by"),
    # Privacy cost.
    "epsilon 0": (_set_path("privacy.epsilon", 0), "privacy.epsilon"),
    "epsilon 0.0": (_set_path("privacy.epsilon", 0.0), "privacy.epsilon"),
    "epsilon negative": (_set_path("privacy.epsilon", -1.0), "privacy.epsilon"),
    "epsilon NaN": (_set_path("privacy.epsilon", math.nan), "privacy.epsilon"),
    "epsilon inf": (_set_path("privacy.epsilon", math.inf), "privacy.epsilon"),
    "epsilon -inf": (_set_path("privacy.epsilon", -math.inf), "privacy.epsilon"),
    "epsilon too large": (_set_path("privacy.epsilon", 10.5), "privacy.epsilon"),
    "epsilon an enormous integer": (_set_path("privacy.epsilon", 10**400), "privacy.epsilon"),
    "epsilon as text": (_set_path("privacy.epsilon", "0.5"), "privacy.epsilon"),
    "epsilon a bool": (_set_path("privacy.epsilon", True), "privacy.epsilon"),
    "rho 0": (lambda d: d.update(privacy={"rho": 0}), "privacy.rho"),
    "rho NaN": (lambda d: d.update(privacy={"rho": math.nan}), "privacy.rho"),
    "both epsilon and rho": (lambda d: d.update(privacy={"epsilon": 0.5, "rho": 0.1}), "privacy"),
    "neither epsilon nor rho": (lambda d: d.update(privacy={}), "privacy"),
    "delta as well": (lambda d: d.update(privacy={"epsilon": 0.5, "delta": 1e-6}), "privacy.delta"),
    # Keys and data model.
    "unknown top-level key": (lambda d: d.update(sql="SELECT 1"), "sql"),
    "unknown data key": (_set_path("data.table", "x"), "data.table"),
    "unknown output key": (_set_path("output.noise", 0), "output.noise"),
    "unknown band key": (_set_path("group_by.0.bands.0.width", 1), "group_by[0].bands[0].width"),
    "missing top-level key": (_pop("legal_basis"), "legal_basis"),
    "missing access": (_pop("access"), "access"),
    "unknown dataset": (_set_path("data.dataset", "tax"), "data.dataset"),
    "unknown source": (_set_path("data.source", "referrals"), "data.source"),
    "wrong schema version": (_set_path("data.schema_version", 2), "data.schema_version"),
    "wrong privacy unit": (_set_path("data.privacy_unit", "arrival_date"), "data.privacy_unit"),
    "privacy unit of another dataset": (
        _set_path("data.privacy_unit", "child_id"),
        "data.privacy_unit",
    ),
    "unknown purpose": (_set_path("purpose", "marketing"), "purpose"),
    "bad id": (_set_path("id", "Bad_ID"), "id"),
    "id with a trailing newline": (_set_path("id", "ed-test\n"), "id"),
    "version 0": (_set_path("version", 0), "version"),
    "version as text": (_set_path("version", "1"), "version"),
    "blank legal basis": (_set_path("legal_basis", "  "), "legal_basis"),
    "template not a table": (lambda d: d.update(data=["dataset"]), "data"),
    # Parameters.
    "parameter declared but unused": (
        lambda d: d["parameters"].update(unused=date_param()),
        "parameters.unused",
    ),
    "enum parameter whose filter is gone": (_pop_filter(0), "parameters.category"),
    "int parameter (nothing can use one)": (
        lambda d: d["parameters"].update(n={"type": "int", "min": 0, "max": 5, "description": ""}),
        "parameters.n",
    ),
    "enum param values not codes of the column": (
        _set_path("parameters.category.values", ["1", "5"]),
        "parameters.category.values[1]",
    ),
    "enum param with SQL in a value": (
        _set_path("parameters.category.values", ["1", _SQL]),
        "parameters.category.values[1]",
    ),
    "enum param without values": (
        _set_path("parameters.category.values", []),
        "parameters.category.values",
    ),
    "enum param duplicate values": (
        _set_path("parameters.category.values", ["1", "1"]),
        "parameters.category.values",
    ),
    "date param min after max": (
        _set_path("parameters.start.min", "2027-01-01"),
        "parameters.start.min",
    ),
    "date param not a date": (
        _set_path("parameters.start.max", "2026-02-30"),
        "parameters.start.max",
    ),
    "date param a datetime text": (
        _set_path("parameters.start.max", "2026-02-03T00:00:00"),
        "parameters.start.max",
    ),
    "unknown parameter type": (_set_path("parameters.start.type", "text"), "parameters.start.type"),
    "bad parameter name": (
        lambda d: d["parameters"].update({"Bad-Name": date_param()}),
        "parameters.Bad-Name",
    ),
    "parameter name with a newline": (
        lambda d: d["parameters"].update({"end\n": date_param()}),
        "parameters.end?",  # shown printable: the newline is not echoed
    ),
    "filter names an undeclared parameter": (
        _set_path("filters.1.end", "finish"),
        "filters[1].end",
    ),
    "date filter names an enum parameter": (
        _set_path("filters.1.end", "category"),
        "filters[1].end",
    ),
    "enum filter names a date parameter": (
        _set_path("filters.0.param", "start"),
        "filters[0].param",
    ),
    "fixed date that is not a date": (
        _set_path("filters.1.start", "2024-13-01"),
        "filters[1].start",
    ),
    # Filters.
    "nested filter all": (
        _filters(
            {"kind": "all", "filters": [{"kind": "equals", "column": "injury", "value": True}]}
        ),
        "filters[2].kind",
    ),
    "nested filter any": (_filters({"kind": "any", "filters": []}), "filters[2].kind"),
    "nested filter not": (_filters({"kind": "not"}), "filters[2].kind"),
    "raw sql filter": (_filters({"kind": "sql", "where": "1=1"}), "filters[2].kind"),
    "age filter max above 150": (
        _filters(
            {"kind": "age", "birth_column": "arrival_date", "at": "start", "min": 0, "max": 200}
        ),
        "filters[2].max",
    ),
    "age filter with at and at_column": (
        _filters(
            {
                "kind": "age",
                "birth_column": "arrival_date",
                "at": "start",
                "at_column": "arrival_date",
                "min": 0,
                "max": 4,
            }
        ),
        "filters[2].at",
    ),
    "too many filters": (
        _filters(*[{"kind": "equals", "column": "injury", "value": True}] * 15),
        "filters",
    ),
    "equals value not a bool": (
        _filters({"kind": "equals", "column": "injury", "value": "true"}),
        "filters[2].value",
    ),
    "SQL in a filter code": (
        _filters({"kind": "in", "column": "attendance_category", "values": [_SQL]}),
        "filters[2].values[0]",
    ),
    "SQL in a category code": (
        _dims(_cats(("a", ["1", _SQL]))),
        "group_by[0].categories[0].codes[1]",
    ),
    "control character in a text code": (
        _filters({"kind": "in", "column": "nhs_number", "values": ["943\n"]}),
        "filters[2].values[0]",
    ),
    "code in two categories": (
        _dims(_cats(("a", ["1", "2"]), ("b", ["2"]))),
        "group_by[0].categories[1].codes",
    ),
    "duplicate code in one category": (
        _dims(_cats(("a", ["1", "1"]))),
        "group_by[0].categories[0].codes",
    ),
    # Dimensions.
    "overlapping bands": (
        _dims(
            {
                **_bands(0),
                "bands": [{"label": "a", "min": 0, "max": 5}, {"label": "b", "min": 5, "max": 9}],
            }
        ),
        "group_by[0].bands",
    ),
    "overlapping bands out of order": (
        _dims(
            {
                **_bands(0),
                "bands": [{"label": "b", "min": 3, "max": 9}, {"label": "a", "min": 0, "max": 3}],
            }
        ),
        "group_by[0].bands",
    ),
    "band min above max": (
        _dims({**_bands(0), "bands": [{"label": "a", "min": 5, "max": 4}]}),
        "group_by[0].bands[0].min",
    ),
    "duplicate band labels": (
        _dims(
            {
                **_bands(0),
                "bands": [{"label": "a", "min": 0, "max": 1}, {"label": "a", "min": 2, "max": 3}],
            }
        ),
        "group_by[0].bands",
    ),
    "duplicate category labels": (
        _dims(_cats(("a", ["1"]), ("a", ["2"]))),
        "group_by[0].categories",
    ),
    "other label same as a category": (_dims(_cats(("a", ["1"]), other="a")), "group_by[0].other"),
    "empty category label": (_dims(_cats(("", ["1"]))), "group_by[0].categories[0].label"),
    "escape sequence in a label": (
        _dims(_cats(("\x1b[31mred", ["1"]))),
        "group_by[0].categories[0].label",
    ),
    "newline in a band label": (
        _dims({**_bands(0), "bands": [{"label": "a\nb", "min": 0, "max": 1}]}),
        "group_by[0].bands[0].label",
    ),
    "NUL in other": (_dims(_cats(("a", ["1"]), other="x\x00")), "group_by[0].other"),
    "unknown dimension kind": (_dims({**_bands(1), "kind": "deciles"}), "group_by[0].kind"),
    "dimension name with a trailing newline": (
        _dims({**_bands(1), "name": "age\n"}),
        "group_by[0].name",
    ),
    "dimension name in upper case": (_dims({**_bands(1), "name": "Age"}), "group_by[0].name"),
    # Unknown cells.
    "unknown label same as a category": (
        _dims({**_cats(("a", ["1"])), "unknown": "a"}),
        "group_by[0].unknown",
    ),
    "unknown label same as other": (
        _dims({**_cats(("a", ["1"]), other="b"), "unknown": "b"}),
        "group_by[0].unknown",
    ),
    "unknown label same as a band": (_dims({**_bands(2), "unknown": "b1"}), "group_by[0].unknown"),
    "unknown on months": (
        _dims({**_months("2024-01", "2024-02"), "unknown": "none"}),
        "group_by[0].unknown",
    ),
    "empty unknown label": (_dims({**_bands(1), "unknown": ""}), "group_by[0].unknown"),
    "escape sequence in unknown": (
        _dims({**_bands(1), "unknown": "\x1b[31m?"}),
        "group_by[0].unknown",
    ),
    "unknown not text": (_dims({**_cats(("a", ["1"])), "unknown": True}), "group_by[0].unknown"),
    "10k unknown label": (_dims({**_bands(1), "unknown": _LONG}), "group_by[0].unknown"),
    # Which record decides a unit's cell.
    "choose on a sum": (
        _stat(**_SUM, lower=0, upper=1, choose="latest", by="arrival_date"),
        "statistic.choose",
    ),
    "choose on a mean": (
        _stat(**{**_SUM, "kind": "mean"}, lower=0, upper=1, choose="earliest"),
        "statistic.choose",
    ),
    "by on count_records": (
        _stat(kind="count_records", max_records_per_unit=1, by="arrival_date"),
        "statistic.by",
    ),
    "choose not a choice": (
        _stat(kind="count_units", max_cells_per_unit=1, choose="lowest", by="arrival_date"),
        "statistic.choose",
    ),
    "choose random spelled out": (
        _stat(kind="count_units", max_cells_per_unit=1, choose="random", by="arrival_date"),
        "statistic.choose",
    ),
    "choose not text": (
        _stat(kind="count_units", max_cells_per_unit=1, choose=1, by="arrival_date"),
        "statistic.choose",
    ),
    "choose in upper case": (
        _stat(kind="count_units", max_cells_per_unit=1, choose="LATEST", by="arrival_date"),
        "statistic.choose",
    ),
    "choose without by": (
        _stat(kind="count_units", max_cells_per_unit=1, choose="latest"),
        "statistic.by",
    ),
    "by without choose": (
        _stat(kind="count_units", max_cells_per_unit=1, by="arrival_date"),
        "statistic.by",
    ),
    "by an int column": (
        _stat(kind="count_units", max_cells_per_unit=1, choose="latest", by="age_years"),
        "statistic.by",
    ),
    "by a bool column": (
        _stat(kind="count_units", max_cells_per_unit=1, choose="latest", by="injury"),
        "statistic.by",
    ),
    "by a column of another source": (
        _stat(kind="count_units", max_cells_per_unit=1, choose="latest", by="DECOM"),
        "statistic.by",
    ),
    "by with SQL": (
        _stat(kind="count_units", max_cells_per_unit=1, choose="latest", by=_SQL),
        "statistic.by",
    ),
    "by a list": (
        _stat(kind="count_units", max_cells_per_unit=1, choose="latest", by=["arrival_date"]),
        "statistic.by",
    ),
    # Text fields.
    "NUL in title": (_set_path("title", "ED\x00attendances"), "title"),
    "NUL in description": (_set_path("description", "a\x00"), "description"),
    "NUL in legal basis": (_set_path("legal_basis", "\x00"), "legal_basis"),
    "NUL in analyst name": (
        _set_path("access.analysts.0.name", "A\x00"),
        "access.analysts[0].name",
    ),
    "NUL in parameter description": (
        _set_path("parameters.start.description", "\x00"),
        "parameters.start.description",
    ),
    "NUL in a category label": (_dims(_cats(("a\x00", ["1"]))), "group_by[0].categories[0].label"),
    "10k title": (_set_path("title", _LONG), "title"),
    "10k description": (_set_path("description", _LONG), "description"),
    "10k legal basis": (_set_path("legal_basis", _LONG), "legal_basis"),
    "10k analyst name": (_set_path("access.analysts.0.name", _LONG), "access.analysts[0].name"),
    "10k parameter description": (
        _set_path("parameters.start.description", _LONG),
        "parameters.start.description",
    ),
    "10k band label": (
        _dims({**_bands(0), "bands": [{"label": _LONG, "min": 0, "max": 1}]}),
        "group_by[0].bands[0].label",
    ),
    "10k id": (_set_path("id", "a" * 10_000), "id"),
    "10k code": (_dims(_cats(("a", ["1" * 10_000]))), "group_by[0].categories[0].codes[0]"),
    "title not text": (_set_path("title", ["ED"]), "title"),
    # Access.
    "analyst key without prefix": (
        _set_path("access.analysts.0.key", "0" * 64),
        "access.analysts[0].key",
    ),
    "analyst key of another algorithm": (
        _set_path("access.analysts.0.key", "rsa:" + "0" * 64),
        "access.analysts[0].key",
    ),
    "analyst key too short": (
        _set_path("access.analysts.0.key", "ed25519:" + "0" * 63),
        "access.analysts[0].key",
    ),
    "analyst key not hex": (
        _set_path("access.analysts.0.key", "ed25519:" + "zz" * 32),
        "access.analysts[0].key",
    ),
    "analyst key upper-case hex": (
        _set_path("access.analysts.0.key", "ed25519:" + "AB" * 32),
        "access.analysts[0].key",
    ),
    "analyst key with spaces": (
        _set_path("access.analysts.0.key", "ed25519:" + "00 " * 21 + "0"),
        "access.analysts[0].key",
    ),
    "no analysts": (_set_path("access.analysts", []), "access.analysts"),
    "analyst listed twice": (
        _set_path("access.analysts", [{"name": "a", "key": KEY}, {"name": "b", "key": KEY}]),
        "access.analysts",
    ),
    "expiry not a date": (_set_path("access.expires", "soon"), "access.expires"),
    "quorum 0": (_set_path("access.quorum", 0), "access.quorum"),
    "breakdown not a bool": (
        _set_path("access.per_node_breakdown", 1),
        "access.per_node_breakdown",
    ),
    # Output.
    "round_to 0": (_set_path("output.round_to", 0), "output.round_to"),
    "negative min_count": (_set_path("output.min_count", -1), "output.min_count"),
}


def test_base_template_for_unsafe_cases_is_valid() -> None:
    t = parse(health())
    assert to_dict(t) == health()


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_template_refused(case: str) -> None:
    edit, field = UNSAFE[case]
    d = health()
    edit(d)
    with pytest.raises(TemplateError) as e:
        parse(d)
    assert e.value.field == field, str(e.value)
    assert str(e.value).startswith(f"{field}: ")
    # Messages name the field; they do not echo long input back.
    assert len(e.value.message) < 300


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("expires = 2027-12-31", "expires = 2027-12-31T10:00:00", "access.expires"),
        ("expires = 2027-12-31", "expires = 2027-12-31T10:00:00Z", "access.expires"),
        ("expires = 2027-12-31", "expires = 10:00:00", "access.expires"),
        ("expires = 2027-12-31", 'expires = "31/12/2027"', "access.expires"),
        ("min = 2015-03-31", "min = 2015-03-31T00:00:00", "parameters.on_date.min"),
        ("max = 2026-03-31", "max = 2026-03-31 00:00:00", "parameters.on_date.max"),
        ("epsilon = 0.5", "epsilon = nan", "privacy.epsilon"),
        ("epsilon = 0.5", "epsilon = inf", "privacy.epsilon"),
        ("epsilon = 0.5", "epsilon = -0.5", "privacy.epsilon"),
        ("epsilon = 0.5", "epsilon = 0.5\nrho = 0.1", "privacy"),
        ('id = "cla-by-age-and-placement"', 'id = "cla"\nsql = "DROP TABLE"', "sql"),
    ],
)
def test_unsafe_toml_refused(old: str, new: str, field: str) -> None:
    doc = REFERENCE_1.read_text(encoding="utf-8")
    assert old in doc
    with pytest.raises(TemplateError) as e:
        load_toml(doc.replace(old, new, 1))
    assert e.value.field == field, str(e.value)


@pytest.mark.parametrize("text", ["id = ", "[data", "a = 1\na = 2", "\x00", "x = 2024-13-01"])
def test_invalid_toml_refused(text: str) -> None:
    with pytest.raises(TemplateError) as e:
        load_toml(text)
    assert e.value.field == "template"


# --- unknown cells and the choice of record ------------------------------------------


def _count_units(**extra: Any) -> dict[str, Any]:
    return {"kind": "count_units", "max_cells_per_unit": 1, **extra}


def test_unknown_cells_and_choose_parse_into_the_model() -> None:
    d = health(
        group_by=[
            {**_cats(("a", ["1"]), other="Other"), "unknown": "Not recorded"},
            {**_bands(2), "unknown": "Age unknown"},
        ],
        statistic=_count_units(choose="earliest", by="arrival_date"),
    )
    t = parse(d)
    cats, bands = t.group_by
    assert isinstance(cats, CategoriesDim) and isinstance(bands, BandsDim)
    # The unknown cell comes last, after `other`.
    assert cats.labels == ("a", "Other", "Not recorded") and cats.unknown == "Not recorded"
    assert bands.labels == ("b0", "b1", "Age unknown")
    assert t.shape == (3, 3)
    assert (t.statistic.choose, t.statistic.by) == (Choice.EARLIEST, "arrival_date")
    assert to_dict(t) == d
    # Left out, they are absent from the canonical form (not encoded as defaults).
    plain = parse(health(statistic=_count_units()))
    assert plain.statistic.choose is None and plain.statistic.by is None
    assert to_dict(plain)["statistic"] == _count_units()
    assert "unknown" not in to_dict(plain)["group_by"][0]


def test_unknown_cells_and_choose_are_signed() -> None:
    """Every value of the new fields is part of the canonical form: the digest moves."""
    variants = [
        health(statistic=_count_units()),
        health(statistic=_count_units(choose="latest", by="arrival_date")),
        health(statistic=_count_units(choose="earliest", by="arrival_date")),
        health(group_by=[_cats(("a", ["1"]))]),
        health(group_by=[{**_cats(("a", ["1"])), "unknown": "?"}]),
        health(group_by=[{**_cats(("a", ["1"])), "unknown": "??"}]),
        health(group_by=[{**_cats(("a", ["1"])), "other": "?"}]),
        health(group_by=[{**_cats(("a", ["1"])), "other": "?", "unknown": "??"}]),
        health(group_by=[{**_cats(("a", ["1"])), "other": "??", "unknown": "?"}]),
        health(group_by=[{**_bands(1), "unknown": "?"}]),
    ]
    digests = [digest(parse(v)) for v in variants]
    assert len(set(digests)) == len(variants)
    for v in variants:
        assert parse_canonical(encode(parse(v))) == parse(v)
    # Canonical bytes with a new field removed are another template, not this one.
    data = encode(parse(variants[1]))
    stripped = json.loads(data)
    del stripped["statistic"]["choose"]
    with pytest.raises(TemplateError) as e:
        parse(stripped)
    assert e.value.field == "statistic.by"


def test_reference_template_1_toml_without_the_new_fields_is_another_template() -> None:
    doc = REFERENCE_1.read_text(encoding="utf-8")
    t = example(REFERENCE_1)
    for line in ('choose = "latest"\nby = "DECOM"\n', 'unknown = "Age not recorded"\n'):
        assert line in doc
        assert digest(load_toml(doc.replace(line, ""))) != digest(t)


_LABELS_IN_PLAY = ["a", "b0", "Other", "?", "x" * 64, "x" * 65, "", "\n"]
_ODD = st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.lists(st.text())


@settings(max_examples=300, deadline=None)
@given(
    choose=st.none() | st.sampled_from(["latest", "earliest", "random", "Latest", ""]) | _ODD,
    by=st.none() | st.sampled_from(_ALL_COLUMNS) | _ODD,
    kind=st.sampled_from(["count_units", "count_records"]),
    unknown=st.none() | st.sampled_from(_LABELS_IN_PLAY) | st.text(max_size=70),
    dim=st.sampled_from(["categories", "bands", "months"]),
)
def test_new_fields_parse_exactly_or_are_refused_by_name(
    choose: Any, by: Any, kind: str, unknown: Any, dim: str
) -> None:
    stat: dict[str, Any] = (
        _count_units() if kind == "count_units" else {"kind": kind, "max_records_per_unit": 1}
    )
    if choose is not None:
        stat["choose"] = choose
    if by is not None:
        stat["by"] = by
    group = {
        "categories": _cats(("a", ["1"]), other="Other"),
        "bands": _bands(2),
        "months": _months("2024-01", "2024-02"),
    }[dim]
    if unknown is not None:
        group = {**group, "unknown": unknown}
    d = health(group_by=[group], statistic=stat)
    try:
        t = parse(d)
    except TemplateError as e:
        assert e.field in {"statistic.choose", "statistic.by", "group_by[0].unknown"}, str(e)
        return
    # Accepted: exactly what was written, signed as written.
    assert to_dict(t) == d
    assert parse_canonical(encode(t)) == t
    assert kind == "count_units" or (choose is None and by is None)
    if choose is not None:
        assert choose in ("latest", "earliest") and by == "arrival_date"
    if unknown is not None:
        assert dim != "months" and t.group_by[0].labels[-1] == unknown
        assert len(set(t.group_by[0].labels)) == len(t.group_by[0].labels)


# --- parameter binding ----------------------------------------------------------------


def test_bind_reference_templates() -> None:
    t1, t2 = example(REFERENCE_1), example(REFERENCE_2)
    assert bind(t1, {"on_date": "2024-03-31"}) == {"on_date": date(2024, 3, 31)}
    assert bind(t1, {"on_date": "2015-03-31"}) == {"on_date": date(2015, 3, 31)}  # bounds inclusive
    assert bind(t1, {"on_date": "2026-03-31"}) == {"on_date": date(2026, 3, 31)}
    got = bind(t2, {"period_start": "2020-01-01", "period_end": "2020-12-31"})
    assert got == {"period_start": date(2020, 1, 1), "period_end": date(2020, 12, 31)}
    assert to_json(got) == {"period_end": "2020-12-31", "period_start": "2020-01-01"}
    t = parse(health())
    assert bind(t, {"start": "2020-01-01", "end": "2021-01-01", "category": "2"})["category"] == "2"


def _with_int_param() -> Template:
    # No construct of the language reads an int parameter yet (parse refuses one as
    # unused), so bind's int branch is tested on a template built directly.
    t = parse(health())
    return dataclasses.replace(t, parameters=(*t.parameters, IntParam("n", -3, 5)))


GOOD = {"start": "2020-01-01", "end": "2021-01-01", "category": "1"}


@pytest.mark.parametrize(
    "raw",
    [
        {**GOOD, "start": "2015-03-31"},  # before min
        {**GOOD, "end": "2026-04-01"},  # after max
        {**GOOD, "start": "2020-02-30"},
        {**GOOD, "start": "2020-1-01"},
        {**GOOD, "start": "01/01/2020"},
        {**GOOD, "start": "2020-01-01T00:00:00"},
        {**GOOD, "start": " 2020-01-01"},
        {**GOOD, "start": "٢٠٢٠-٠١-٠١"},
        {**GOOD, "start": 20200101},
        {**GOOD, "start": None},
        {**GOOD, "start": ["2020-01-01"]},
        {**GOOD, "category": "3"},  # a code of the column, but not in the enum
        {**GOOD, "category": 1},
        {**GOOD, "category": "1 "},
        {**GOOD, "category": ["1"]},
        {**GOOD, "extra": 1},  # unknown
        {"start": "2020-01-01", "end": "2021-01-01"},  # missing
        {},
    ],
)
def test_bind_refuses(raw: dict[str, Any]) -> None:
    with pytest.raises(ParamError):
        bind(parse(health()), raw)


def test_bind_refuses_a_date_object() -> None:
    # Values arrive as JSON: dates are text, never date objects.
    with pytest.raises(ParamError):
        bind(parse(health()), {**GOOD, "start": date(2020, 1, 1)})


def test_bind_refuses_non_mapping() -> None:
    for raw in ([], "start=2020-01-01", None, 3):
        with pytest.raises(ParamError):
            bind(parse(health()), raw)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, False, 1.0, "1", -4, 6, None, 10**100])
def test_bind_int_refuses(value: Any) -> None:
    t = _with_int_param()
    with pytest.raises(ParamError):
        bind(t, {**GOOD, "n": value})


def test_bind_int_accepts_bounds() -> None:
    t = _with_int_param()
    assert bind(t, {**GOOD, "n": -3})["n"] == -3
    assert bind(t, {**GOOD, "n": 5})["n"] == 5


def test_bind_messages() -> None:
    t = parse(health())
    cases = {
        "start": ({**GOOD, "start": "2000-01-01"}, "between 2015-04-01 and 2026-03-31"),
        "type": ({**GOOD, "start": 5}, "must be a date YYYY-MM-DD"),
        "missing": ({"start": "2020-01-01", "category": "1"}, "parameter end is required"),
        "enum": ({**GOOD, "category": "4"}, "must be one of 1, 2"),
        "unknown": ({**GOOD, "finish": "x"}, "parameter 'finish' is not declared"),
    }
    for raw, text in cases.values():
        with pytest.raises(ParamError, match=re.escape(text)):
            bind(t, raw)


@pytest.mark.parametrize(
    "name",
    [
        "x" * 10_000,
        "\x1b[2J\x1b[31mowned",
        "a\nb\rc\x00d",
        "\u202eevil",  # right-to-left override
        "é" * 50,
        "'; DROP TABLE x; --",
    ],
)
def test_unknown_parameter_names_are_not_echoed_verbatim(name: str) -> None:
    with pytest.raises(ParamError) as e:
        bind(parse(health()), {**GOOD, name: "2020-01-01"})
    msg = str(e.value)
    assert len(msg) < 120
    assert all(ch.isprintable() for ch in msg)
    assert name not in msg or len(name) <= 40


def test_quote() -> None:
    assert _quote("finish") == "'finish'"
    assert _quote("x" * 100) == repr("x" * 40)
    assert _quote("a\x00b\nc\x1b") == "'a?b?c?'"
    assert _quote("\u202e") == "'?'"
    for s in ("a" * 41, "\x7f" * 3, "\t", "é\u2028"):
        q = _quote(s)
        assert len(q) <= 42 and all(ch.isprintable() for ch in q)


# --- anything in, TemplateError or a template out ---------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["", "2024-01-01", "2024-01", "0", "in", "sum", "N1", "1", KEY, "on_date"])
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=12) | st.sampled_from(sorted(to_dict(parse(health())))),
            children,
            max_size=4,
        )
    ),
    max_leaves=25,
)


def _parse_or_refuse(value: Any) -> None:
    try:
        t = parse(value)
    except TemplateError as e:
        assert isinstance(e.field, str)
        return
    # Whatever parses is a well-formed template: it encodes and round-trips.
    assert parse_canonical(encode(t)) == t


@settings(max_examples=300, deadline=None)
@given(value=_json)
def test_arbitrary_values_parse_or_raise_template_error(value: Any) -> None:
    _parse_or_refuse(value)


_BASES = [
    health(),
    *(copy.deepcopy(d) for d in RICH.values()),
    *(to_dict(example(p)) for p in EXAMPLE_FILES),
]


@st.composite
def _mutated_templates(draw: st.DrawFn) -> Any:
    """A valid template with one value, anywhere in it, replaced or removed or added."""
    d = copy.deepcopy(draw(st.sampled_from(_BASES)))
    nodes: list[tuple[Any, Any]] = []  # (container, key) of every value

    def walk(x: Any) -> None:
        items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
        for k, v in items:
            nodes.append((x, k))
            walk(v)

    walk(d)
    container, key = draw(st.sampled_from(nodes))
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace":
        container[key] = draw(_json)
    elif action == "remove":
        container.pop(key)
    elif isinstance(container, dict):
        container[draw(st.text(max_size=12))] = draw(_json)
    else:
        container.append(draw(_json))
    return d


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_mutated_templates())
def test_mutated_templates_parse_or_raise_template_error(value: Any) -> None:
    _parse_or_refuse(value)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64) | _json.map(lambda v: json.dumps(v).encode()))
def test_arbitrary_bytes_parse_canonical_or_raise_template_error(data: bytes) -> None:
    try:
        parse_canonical(data)
    except TemplateError:
        pass


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=string.printable, max_size=200))
def test_arbitrary_toml_text_loads_or_raises_template_error(text: str) -> None:
    try:
        load_toml(text)
    except TemplateError:
        pass
