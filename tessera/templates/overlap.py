"""Overlap templates (statistic overlap_count): reading and the canonical form.

An overlap names two to four datasets, each with its source, its NHS number column
(the linkage key) and its own filters (which units count as known to that agency).
The cells are the group_by dimensions of one of them (`categories_from`). There is
no [data] table and no top-level filters: both are per dataset. Every dataset must
take part, so the quorum is the number of datasets, and there are no per-node
answers. The protocol (tessera.overlap) calibrates its own pure-DP noise, so the
cost is an epsilon.
"""

from __future__ import annotations

from typing import Any

from tessera import schemas
from tessera.templates.canonical_dict import (
    access_dict,
    dim_dict,
    filter_dict,
    param_dict,
    privacy_dict,
)
from tessera.templates.fields import Fields
from tessera.templates.model import (
    OverlapDataset,
    OverlapMatch,
    OverlapSpec,
    Statistic,
    StatisticKind,
    Template,
    TemplateError,
)
from tessera.templates.parse import Head
from tessera.templates.release import read_access, read_choice, read_output, read_privacy
from tessera.templates.scope import (
    MAX_FILTERS,
    Context,
    check_all_used,
    group_by,
    read_filter,
    read_parameters,
)

# The linkage key every overlap dataset must name: the NHS number, the only identifier
# the protocol validates (modulus 11) and that every agency's schema records.
LINKAGE_KEY = "nhs_number"
MIN_DATASETS = 2
MAX_DATASETS = 4
# Fields of the other statistics, which mean nothing for an overlap (one child is one
# element per agency: there is no cap to set and no value to bound).
_NOT_FOR_OVERLAP = ("max_cells_per_unit", "max_records_per_unit", "column", "lower", "upper")


def parse_overlap(f: Fields, head: Head) -> Template:
    if f.has("data"):
        raise TemplateError(
            "data", "an overlap template names its datasets in [[overlap.datasets]], not [data]"
        )
    if f.has("filters"):
        raise TemplateError(
            "filters", "an overlap template's filters are per dataset (overlap.datasets[i].filters)"
        )
    params = read_parameters(f, None)
    by_name = {p.name: p for p in params}
    used: set[str] = set()
    parties, contexts = _datasets(f.table("overlap"), by_name, used)
    names = [p.dataset for p in parties]

    s = f.table("statistic")
    s.text("kind", max_len=20)
    for key in _NOT_FOR_OVERLAP:
        if s.has(key):
            raise TemplateError(
                s.at(key),
                "does not apply to overlap_count: one child is one element per agency",
            )
    match_text = s.text("match", max_len=20)
    try:
        match = OverlapMatch(match_text)
    except ValueError:
        raise TemplateError(s.at("match"), "must be all, a_not_b or at_least_k") from None
    cat = _dataset_index(s, "categories_from", names)
    k: int | None = None
    if match is OverlapMatch.AT_LEAST_K:
        k = s.integer("k", lo=2, hi=len(names))
    elif s.has("k"):
        raise TemplateError(s.at("k"), "applies to match at_least_k only")
    b: int | None = None
    if match is OverlapMatch.A_NOT_B:
        if not s.has("b"):
            raise TemplateError(
                s.at("b"), "is required with a_not_b: the dataset the units must be absent from"
            )
        b = _dataset_index(s, "b", names)
        if b == cat:
            raise TemplateError(s.at("b"), "must differ from categories_from (dataset a)")
    elif s.has("b"):
        raise TemplateError(s.at("b"), "applies to match a_not_b only")
    choose, by = read_choice(s, contexts[cat])
    s.done()

    dims = group_by(f, contexts[cat])
    privacy = read_privacy(f.table("privacy"))
    if privacy.epsilon is None:
        raise TemplateError(
            "privacy.rho", "an overlap's cost is an epsilon: its noise is pure-DP dummies"
        )
    output = read_output(f.table("output"))
    access = read_access(f.table("access"))
    if access.quorum != len(names):
        raise TemplateError(
            "access.quorum", f"must be {len(names)}: every dataset of an overlap takes part"
        )
    if access.per_node_breakdown:
        raise TemplateError(
            "access.per_node_breakdown", "must be false: an overlap has no per-node answers"
        )
    if access.threshold:
        raise TemplateError("access.threshold", "does not apply to an overlap")
    check_all_used(by_name, used)
    f.done()
    categories = parties[cat]
    source = contexts[cat].source
    return Template(
        id=head.id,
        version=head.version,
        title=head.title,
        purpose=head.purpose,
        description=head.description,
        legal_basis=head.legal_basis,
        dataset=categories.dataset,
        schema_version=categories.schema_version,
        source=categories.source,
        privacy_unit=source.unit,
        parameters=params,
        filters=(),
        group_by=dims,
        statistic=Statistic(StatisticKind.OVERLAP_COUNT, choose=choose, by=by),
        privacy=privacy,
        output=output,
        access=access,
        overlap=OverlapSpec(tuple(parties), match, k, cat, b),
    )


def _datasets(
    o: Fields, params: dict[str, Any], used: set[str]
) -> tuple[list[OverlapDataset], list[Context]]:
    items = o.tables("datasets", max_items=MAX_DATASETS)
    if len(items) < MIN_DATASETS:
        raise TemplateError(
            o.at("datasets"), f"must name {MIN_DATASETS} to {MAX_DATASETS} datasets"
        )
    parties: list[OverlapDataset] = []
    contexts: list[Context] = []
    for t in items:
        name = t.text("dataset", max_len=40)
        ds = schemas.dataset(name)
        if ds is None:
            raise TemplateError(t.at("dataset"), "is not a dataset of the data model")
        if any(p.dataset == name for p in parties):
            raise TemplateError(t.at("dataset"), f"names {name} a second time")
        version = t.integer("schema_version", lo=1, hi=1000)
        if version != ds.schema_version:
            raise TemplateError(t.at("schema_version"), f"must be {ds.schema_version}")
        src_name = t.text("source", max_len=40)
        source = ds.sources.get(src_name)
        if source is None:
            raise TemplateError(t.at("source"), f"is not a source of dataset {name}")
        ctx = Context(source, params, used)
        key = ctx.column(t, "linkage_key", schemas.ColumnType.TEXT)
        if key.name != LINKAGE_KEY:
            raise TemplateError(t.at("linkage_key"), f"must be the NHS number column {LINKAGE_KEY}")
        filters = tuple(
            read_filter(x, ctx) for x in t.tables("filters", max_items=MAX_FILTERS, default=[])
        )
        t.done()
        parties.append(OverlapDataset(name, src_name, key.name, filters, version))
        contexts.append(ctx)
    o.done()
    return parties, contexts


def _dataset_index(s: Fields, key: str, names: list[str]) -> int:
    name = s.text(key, max_len=40)
    if name not in names:
        raise TemplateError(s.at(key), "must name one of the datasets in overlap.datasets")
    return names.index(name)


def to_dict(t: Template) -> dict[str, Any]:
    """The canonical form of an overlap template (see parse.to_dict for the others)."""
    o = t.overlap
    assert o is not None
    stat: dict[str, Any] = {
        "kind": StatisticKind.OVERLAP_COUNT.value,
        "match": o.match.value,
        "categories_from": o.datasets[o.categories_from].dataset,
    }
    if o.k is not None:
        stat["k"] = o.k
    if o.b is not None:
        stat["b"] = o.datasets[o.b].dataset
    if t.statistic.choose is not None:
        stat["choose"] = t.statistic.choose.value
        stat["by"] = t.statistic.by
    return {
        "id": t.id,
        "version": t.version,
        "title": t.title,
        "purpose": t.purpose,
        "description": t.description,
        "legal_basis": t.legal_basis,
        "overlap": {
            "datasets": [
                {
                    "dataset": d.dataset,
                    "schema_version": d.schema_version,
                    "source": d.source,
                    "linkage_key": d.linkage_key,
                    "filters": [filter_dict(x) for x in d.filters],
                }
                for d in o.datasets
            ]
        },
        "parameters": {p.name: param_dict(p) for p in t.parameters},
        "group_by": [dim_dict(x) for x in t.group_by],
        "statistic": stat,
        "privacy": privacy_dict(t),
        "output": {"min_count": t.output.min_count, "round_to": t.output.round_to},
        "access": access_dict(t),
    }
