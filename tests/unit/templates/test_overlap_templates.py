"""Overlap templates (statistic overlap_count): reading, every refusal by name, the
canonical form and its digest, and the mapping onto the protocol's OverlapQuery."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.overlap.protocol import Kind
from tessera.overlap.spec import categories, overlap_query
from tessera.templates import TemplateError, digest, encode, load_toml, parse_canonical
from tessera.templates.model import (
    BetweenFilter,
    InFilter,
    OverlapMatch,
    StatisticKind,
    measure_sensitivities,
)
from tessera.templates.parse import parse, to_dict

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "templates"
REFERENCE_5 = EXAMPLES / "overlap-domestic-abuse-known-to-social-care.toml"
THREE_AGENCIES = EXAMPLES / "overlap-known-to-two-of-three-agencies.toml"
KEY = "ed25519:" + "0" * 64

# The digests of the templates that predate overlaps, as HEAD computed them before
# overlaps were added: adding the language feature must not move any of them.
PINNED = {
    "absence-by-sen.toml": "f296bee5774756260e31c7c7d50358a3af61130c008bdc9b6f8c46ffa4311ecf",
    "cla-by-age-and-placement.toml": (
        "8beddd69ed190fe40508b6ab5a65e4b7c4ba14a855bfc99ade99d3f48f3332dc"
    ),
    "ed-injuries-under-fives-by-month.toml": (
        "254595d1eb4fe9f4e05e44130541953f6b1dbd5840096f310b65cc4f45236718"
    ),
    "police-incidents-by-type.toml": (
        "16f1d169e3aca39f23ed2abd0020b57cf5a6bddb800a94e68c9ba5c83e15910e"
    ),
    # Re-pinned when T2 gained its "Need not recorded" / "Age not recorded" cells.
    "referrals-by-need-and-age.toml": (
        "bc125f746f3a23076d630eda3c2ef795f40f5ba648194dc59ac2b2fc00a49c9c"
    ),
}


def reference_5() -> dict[str, Any]:
    return to_dict(load_toml(REFERENCE_5.read_text(encoding="utf-8")))


def three() -> dict[str, Any]:
    return to_dict(load_toml(THREE_AGENCIES.read_text(encoding="utf-8")))


# --- reading --------------------------------------------------------------------------


def test_reference_template_5_reads_into_the_model() -> None:
    t = load_toml(REFERENCE_5.read_text(encoding="utf-8"))
    o = t.overlap
    assert o is not None and t.statistic.kind is StatisticKind.OVERLAP_COUNT
    assert [(d.dataset, d.source, d.linkage_key) for d in o.datasets] == [
        ("police", "incidents", "nhs_number"),
        ("cin", "children", "nhs_number"),
    ]
    assert o.match is OverlapMatch.ALL and o.k is None and o.b is None
    assert o.categories_from == 1
    # The template's own data are the categories dataset's; its filters are per dataset.
    assert (t.dataset, t.source, t.privacy_unit, t.filters) == ("cin", "children", "child_id", ())
    assert o.datasets[0].filters[0] == InFilter("incident_type", ("DOMESTIC_ABUSE_NOTIFICATION",))
    assert isinstance(o.datasets[0].filters[1], BetweenFilter)
    assert o.datasets[1].filters == ()
    assert t.shape == (6,) and t.n_cells == 6
    assert t.group_by[0].labels[-1] == "Age not recorded"
    assert t.privacy.epsilon == 1.0 and t.output.min_count == 5
    assert t.access.quorum == 2 and not t.access.per_node_breakdown
    assert measure_sensitivities(t.statistic)["count"].l1 == 2.0


def test_three_agency_template_reads_into_the_model() -> None:
    t = load_toml(THREE_AGENCIES.read_text(encoding="utf-8"))
    o = t.overlap
    assert o is not None
    assert [d.dataset for d in o.datasets] == ["health", "police", "cin"]
    assert (o.match, o.k, o.categories_from) == (OverlapMatch.AT_LEAST_K, 2, 2)
    # One parameter pair is used by two datasets' filters, one by the group_by.
    assert {p.name for p in t.parameters} == {"period_start", "period_end", "on_date"}


def test_a_not_b_reads_b_by_name() -> None:
    d = reference_5()
    d["statistic"] = {"kind": "overlap_count", "match": "a_not_b", "categories_from": "cin"}
    d["statistic"]["b"] = "police"
    t = parse(d)
    assert t.overlap is not None and (t.overlap.categories_from, t.overlap.b) == (1, 0)
    assert to_dict(t) == d


@pytest.mark.parametrize("name", sorted(PINNED))
def test_existing_templates_keep_their_digests(name: str) -> None:
    t = load_toml((EXAMPLES / name).read_text(encoding="utf-8"))
    assert t.overlap is None
    assert digest(t) == PINNED[name]
    assert "overlap" not in to_dict(t)


@pytest.mark.parametrize("path", [REFERENCE_5, THREE_AGENCIES], ids=lambda p: p.stem)
def test_overlap_templates_are_canonical_and_signed_whole(path: Path) -> None:
    t = load_toml(path.read_text(encoding="utf-8"))
    assert parse_canonical(encode(t)) == t
    d = to_dict(t)
    assert "overlap" in d and "data" not in d and "filters" not in d
    # Every part of the overlap block is covered by the digest.
    age = {"kind": "age", "birth_column": "dob", "at": "on_date", "min": 0, "max": 17}
    for edit in (
        lambda x: x["overlap"]["datasets"][-1]["filters"].append(age),
        lambda x: x["overlap"]["datasets"].reverse(),
        _a_not_first,
        lambda x: x["privacy"].update(epsilon=0.25),
        lambda x: x["output"].update(min_count=10),
    ):
        e = copy.deepcopy(d)
        edit(e)
        assert digest(parse(e)) != digest(t)


def _a_not_first(x: dict[str, Any]) -> None:
    x["statistic"].pop("k", None)
    x["statistic"].update(match="a_not_b", b=x["overlap"]["datasets"][0]["dataset"])


# --- refusals -------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        node: Any = d
        *head, last = path.split(".")
        for part in head:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        node: Any = d
        *head, last = path.split(".")
        for part in head:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return edit


def _datasets(f: Callable[[list[dict[str, Any]]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        f(d["overlap"]["datasets"])

    return edit


def _education() -> dict[str, Any]:
    return {
        "dataset": "education",
        "schema_version": 1,
        "source": "pupils",
        "linkage_key": "nhs_number",
        "filters": [],
    }


def _health() -> dict[str, Any]:
    return {
        "dataset": "health",
        "schema_version": 1,
        "source": "ed_attendances",
        "linkage_key": "nhs_number",
        "filters": [],
    }


REFUSED: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "one dataset": (_datasets(lambda ds: ds.pop(0)), "overlap.datasets"),
    "no datasets": (_datasets(lambda ds: ds.clear()), "overlap.datasets"),
    "five datasets": (
        _datasets(lambda ds: ds.extend([_education(), _health(), _health()])),
        "overlap.datasets",
    ),
    "a dataset named twice": (
        _datasets(lambda ds: ds.append(copy.deepcopy(ds[1]))),
        "overlap.datasets[2].dataset",
    ),
    "unknown dataset": (
        _set("overlap.datasets.0.dataset", "prison"),
        "overlap.datasets[0].dataset",
    ),
    "wrong schema version": (
        _set("overlap.datasets.0.schema_version", 2),
        "overlap.datasets[0].schema_version",
    ),
    "unknown source": (_set("overlap.datasets.1.source", "pupils"), "overlap.datasets[1].source"),
    "source without the key": (
        _set("overlap.datasets.1.source", "referrals"),
        "overlap.datasets[1].linkage_key",
    ),
    "unknown key column": (
        _set("overlap.datasets.0.linkage_key", "nhs"),
        "overlap.datasets[0].linkage_key",
    ),
    "a key that is not the NHS number": (
        _set("overlap.datasets.0.linkage_key", "person_id"),
        "overlap.datasets[0].linkage_key",
    ),
    "a key column of the wrong type": (
        _set("overlap.datasets.0.linkage_key", "incident_type"),
        "overlap.datasets[0].linkage_key",
    ),
    "a filter on another dataset's column": (
        _set("overlap.datasets.0.filters.0.column", "primary_need"),
        "overlap.datasets[0].filters[0].column",
    ),
    "a filter naming no parameter": (
        _set("overlap.datasets.0.filters.1.start", "period_begin"),
        "overlap.datasets[0].filters[1].start",
    ),
    "a stray dataset field": (
        _set("overlap.datasets.1.privacy_unit", "child_id"),
        "overlap.datasets[1].privacy_unit",
    ),
    "a stray overlap field": (_set("overlap.mode", "fast"), "overlap.mode"),
    "unknown match": (_set("statistic.match", "any"), "statistic.match"),
    "no match": (_drop("statistic.match"), "statistic.match"),
    "no categories_from": (_drop("statistic.categories_from"), "statistic.categories_from"),
    "categories_from not a dataset of the overlap": (
        _set("statistic.categories_from", "health"),
        "statistic.categories_from",
    ),
    "k with match all": (_set("statistic.k", 2), "statistic.k"),
    "b with match all": (_set("statistic.b", "police"), "statistic.b"),
    "a_not_b without b": (_set("statistic.match", "a_not_b"), "statistic.b"),
    "a cap on an overlap": (
        _set("statistic.max_cells_per_unit", 1),
        "statistic.max_cells_per_unit",
    ),
    "a record cap on an overlap": (
        _set("statistic.max_records_per_unit", 1),
        "statistic.max_records_per_unit",
    ),
    "a value column on an overlap": (_set("statistic.column", "dob"), "statistic.column"),
    "value bounds on an overlap": (_set("statistic.upper", 5), "statistic.upper"),
    "choose without by": (_set("statistic.choose", "latest"), "statistic.by"),
    "group_by on a column of another dataset": (
        _set("group_by.0.birth_column", "incident_date"),
        "group_by[0].birth_column",
    ),
    "group_by on a column of no dataset": (
        _set("group_by.0.birth_column", "DOB"),
        "group_by[0].birth_column",
    ),
    "quorum below the datasets": (_set("access.quorum", 1), "access.quorum"),
    "quorum above the datasets": (_set("access.quorum", 3), "access.quorum"),
    "per-node breakdown": (_set("access.per_node_breakdown", True), "access.per_node_breakdown"),
    "a secure-aggregation threshold": (_set("access.threshold", 2), "access.threshold"),
    "a rho cost": (_set("privacy", {"rho": 0.1}), "privacy.rho"),
    "a [data] table": (
        _set(
            "data",
            {
                "dataset": "cin",
                "schema_version": 1,
                "source": "children",
                "privacy_unit": "child_id",
            },
        ),
        "data",
    ),
    "top-level filters": (_set("filters", []), "filters"),
    "an unused parameter": (
        _set("parameters.spare", {"type": "int", "min": 0, "max": 1, "description": ""}),
        "parameters.spare",
    ),
    "an overlap table on another statistic": (
        _set("statistic", {"kind": "count_units", "max_cells_per_unit": 1}),
        "overlap",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_naming_the_field(case: str) -> None:
    edit, field = REFUSED[case]
    d = reference_5()
    edit(d)
    with pytest.raises(TemplateError) as e:
        parse(d)
    assert e.value.field == field, str(e.value)
    assert str(e.value).startswith(f"{field}: ") and len(e.value.message) < 300


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_set("statistic.k", 4), "statistic.k"),
        (_set("statistic.k", 1), "statistic.k"),
        (_drop("statistic.k"), "statistic.k"),
        (_set("statistic.match", "all"), "statistic.k"),
        (
            lambda d: d["statistic"].update(match="a_not_b", b="cin", k=None) or None,
            "statistic.k",
        ),
    ],
)
def test_k_of_n_refusals(edit: Callable[[dict[str, Any]], None], field: str) -> None:
    d = three()
    edit(d)
    with pytest.raises(TemplateError) as e:
        parse(d)
    assert e.value.field == field, str(e.value)


def test_a_not_b_with_b_equal_to_categories_from_is_refused() -> None:
    d = three()
    d["statistic"] = {"kind": "overlap_count", "match": "a_not_b", "categories_from": "cin"}
    d["statistic"]["b"] = "cin"
    with pytest.raises(TemplateError) as e:
        parse(d)
    assert e.value.field == "statistic.b"
    d["statistic"]["b"] = "education"
    with pytest.raises(TemplateError) as e:
        parse(d)
    assert e.value.field == "statistic.b"


def test_overlap_count_without_an_overlap_table_is_refused() -> None:
    d = reference_5()
    del d["overlap"]
    with pytest.raises(TemplateError) as e:
        parse(d)
    assert e.value.field == "statistic.kind"


def test_toml_shape_from_the_docs() -> None:
    """The example in docs/templates.md reads as documented."""
    doc = (REPO / "docs" / "templates.md").read_text(encoding="utf-8")
    block = next(b for b in doc.split("```toml")[1:] if 'kind = "overlap_count"' in b)
    head = (
        'id = "doc-example"\nversion = 1\ntitle = "t"\npurpose = "research"\n'
        'legal_basis = "Children Act 2004 s.10"\n'
    )
    tail = (
        "\n[privacy]\nepsilon = 1.0\n[output]\nmin_count = 5\nround_to = 1\n"
        f'[access]\nanalysts = [{{ name = "A", key = "{KEY}" }}]\n'
        "expires = 2027-12-31\nquorum = 2\nper_node_breakdown = false\n"
    )
    t = load_toml(head + block.split("```")[0] + tail)
    assert t.overlap is not None and [d.dataset for d in t.overlap.datasets] == ["police", "cin"]
    assert t.overlap.match is OverlapMatch.ALL and t.overlap.categories_from == 1


# --- the protocol's query -------------------------------------------------------------


def test_overlap_query_maps_the_template() -> None:
    t = load_toml(REFERENCE_5.read_text(encoding="utf-8"))
    values: dict[str, Any] = {"period_start": 0, "period_end": 0, "on_date": 0}
    q = overlap_query(t, values, os.urandom(16))
    assert q.parties == ("police", "cin") and q.kind is Kind.ALL
    assert q.categories == t.group_by[0].labels and q.category_party == 1
    assert q.epsilon == 1.0 and q.min_count == 5
    assert overlap_query(t, values, os.urandom(16), None).epsilon is None
    with pytest.raises(ValueError, match="on_date"):
        overlap_query(t, {"period_start": 0, "period_end": 0}, os.urandom(16))
    k = overlap_query(load_toml(THREE_AGENCIES.read_text(encoding="utf-8")), values, b"q" * 16)
    assert (k.kind, k.k, k.category_party, k.parties) == (
        Kind.AT_LEAST_K,
        2,
        2,
        ("health", "police", "cin"),
    )
    d = reference_5()
    d["statistic"] = {"kind": "overlap_count", "match": "a_not_b", "categories_from": "cin"}
    d["statistic"]["b"] = "police"
    a = overlap_query(parse(d), values, os.urandom(16))
    assert (a.kind, a.a, a.b) == (Kind.A_NOT_B, 1, 0)


def test_categories_are_flat_row_major_labels() -> None:
    d = three()
    d["group_by"].append(
        {
            "name": "sex",
            "kind": "categories",
            "column": "sex",
            "categories": [{"label": "M", "codes": ["1"]}, {"label": "F", "codes": ["2"]}],
        }
    )
    t = parse(d)
    cats = categories(t)
    assert len(cats) == t.n_cells == 12
    assert cats[:3] == ("under 1 × M", "under 1 × F", "1-4 × M")
    d["group_by"] = []
    del d["parameters"]["on_date"]
    assert categories(parse(d)) == ("All",)


def test_other_templates_are_not_overlap_queries() -> None:
    t = load_toml((EXAMPLES / "police-incidents-by-type.toml").read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match="not an overlap"):
        overlap_query(t, {}, os.urandom(16))


# --- round trip -----------------------------------------------------------------------

# Each linkable source, with filters and a dimension over its own columns.
_SOURCES: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]] = {
    "police": (
        "incidents",
        [
            {"kind": "in", "column": "incident_type", "values": ["MISSING_EPISODE"]},
            {"kind": "between", "column": "incident_date", "start": "start", "end": "2026-03-31"},
        ],
        {
            "name": "kind",
            "kind": "categories",
            "column": "incident_type",
            "categories": [{"label": "DA", "codes": ["DOMESTIC_ABUSE_NOTIFICATION"]}],
            "other": "Other",
        },
    ),
    "cin": (
        "children",
        [{"kind": "age", "birth_column": "dob", "at": "start", "min": 0, "max": 17}],
        {
            "name": "age",
            "kind": "bands",
            "birth_column": "dob",
            "at": "start",
            "bands": [{"label": "0-4", "min": 0, "max": 4}, {"label": "5+", "min": 5, "max": 25}],
            "unknown": "Unknown",
        },
    ),
    "health": (
        "ed_attendances",
        [
            {"kind": "equals", "column": "injury", "value": True},
            {"kind": "range", "column": "age_years", "min": 0, "max": 4},
        ],
        {
            "name": "age",
            "kind": "bands",
            "column": "age_years",
            "bands": [{"label": "0", "min": 0, "max": 0}, {"label": "1-4", "min": 1, "max": 4}],
        },
    ),
    "education": (
        "pupils",
        [{"kind": "equals", "column": "fsm", "value": True}],
        {
            "name": "sen",
            "kind": "categories",
            "column": "sen",
            "categories": [{"label": "EHC", "codes": ["EHC_PLAN"]}],
        },
    ),
}


@st.composite
def overlap_templates(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.permutations(sorted(_SOURCES)))[: draw(st.integers(2, 4))]
    cat = draw(st.integers(0, len(names) - 1))
    datasets = []
    for name in names:
        source, filters, _ = _SOURCES[name]
        chosen = [f for f in filters if draw(st.booleans())]
        datasets.append(
            {
                "dataset": name,
                "schema_version": 1,
                "source": source,
                "linkage_key": "nhs_number",
                "filters": chosen,
            }
        )
    match = draw(st.sampled_from(list(OverlapMatch)))
    stat: dict[str, Any] = {
        "kind": "overlap_count",
        "match": match.value,
        "categories_from": names[cat],
    }
    if match is OverlapMatch.AT_LEAST_K:
        stat["k"] = draw(st.integers(2, len(names)))
    if match is OverlapMatch.A_NOT_B:
        stat["b"] = draw(st.sampled_from([n for n in names if n != names[cat]]))
    dims = [_SOURCES[names[cat]][2]] if draw(st.booleans()) else []
    printable = st.one_of(
        st.characters(min_codepoint=32, max_codepoint=126),
        st.characters(min_codepoint=0xA0, max_codepoint=0x2FF),
    )
    text = st.text(printable, max_size=30)
    d = {
        "id": "overlap-" + draw(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True)),
        "version": draw(st.integers(1, 10_000)),
        "title": draw(text),
        "purpose": draw(st.sampled_from(["service_planning", "research"])),
        "description": draw(text),
        "legal_basis": "Children Act 2004 s.10",
        "overlap": {"datasets": datasets},
        "parameters": {
            "start": {"type": "date", "min": "2020-01-01", "max": "2026-03-31", "description": ""}
        },
        "group_by": dims,
        "statistic": stat,
        "privacy": {"epsilon": draw(st.floats(0.01, 10.0))},
        "output": {"min_count": draw(st.integers(0, 1000)), "round_to": 1},
        "access": {
            "analysts": [{"name": "Analyst", "key": KEY}],
            "expires": "2027-12-31",
            "quorum": len(names),
            "per_node_breakdown": False,
        },
    }
    uses_start = any(
        "start" in (f.get("start"), f.get("at")) for ds in datasets for f in ds["filters"]
    ) or any(dm.get("at") == "start" for dm in dims)
    if not uses_start:
        del d["parameters"]["start"]
    return d


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overlap_templates())
def test_parse_canonical_parse_round_trip(d: dict[str, Any]) -> None:
    t = parse(d)
    assert t.overlap is not None
    assert to_dict(t) == d
    data = encode(t)
    again = parse_canonical(data)
    assert again == t and encode(again) == data and digest(again) == digest(t)
