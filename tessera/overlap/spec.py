"""An overlap template as the protocol's OverlapQuery (shared by node and coordinator)."""

from __future__ import annotations

from collections.abc import Mapping
from types import EllipsisType

from tessera.overlap.protocol import Kind, OverlapQuery
from tessera.templates.model import OverlapMatch, ParamValue, Template

_KINDS = {
    OverlapMatch.ALL: Kind.ALL,
    OverlapMatch.A_NOT_B: Kind.A_NOT_B,
    OverlapMatch.AT_LEAST_K: Kind.AT_LEAST_K,
}
# The one cell of a template without dimensions.
SINGLE_CELL = "All"


def categories(template: Template) -> tuple[str, ...]:
    """The template's cells as the protocol's categories: flat, in row-major order
    (the order of template.shape and results.cell_labels), dimension labels joined."""
    out: list[tuple[str, ...]] = [()]
    for dim in template.group_by:
        out = [(*prefix, label) for prefix in out for label in dim.labels]
    return tuple(" × ".join(labels) if labels else SINGLE_CELL for labels in out)


def overlap_query(
    template: Template,
    values: Mapping[str, ParamValue],
    query_id: bytes,
    epsilon: float | EllipsisType | None = ...,
    *,
    noise_party: int | None = None,
) -> OverlapQuery:
    """The query for one run of `template`. `epsilon` defaults to the template's
    (the loss of the counter's view); None switches noise off (tests only).

    `values` are the bound parameters: they decide which units each node selects
    (node/overlap_source.py), not the shape of the query, so only their presence is
    checked here."""
    spec = template.overlap
    if spec is None:
        raise ValueError(f"template {template.id} is not an overlap template")
    missing = sorted({p.name for p in template.parameters} - set(values))
    if missing:
        raise ValueError(f"parameter {missing[0]} has no value")
    eps = template.privacy.epsilon if epsilon is ... else epsilon
    kind = _KINDS[spec.match]
    return OverlapQuery(
        query_id=query_id,
        parties=tuple(d.dataset for d in spec.datasets),
        categories=categories(template),
        kind=kind,
        category_party=spec.categories_from,
        k=spec.k if spec.k is not None else 2,
        a=spec.categories_from,
        b=spec.b if spec.b is not None else (1 if spec.categories_from == 0 else 0),
        epsilon=eps,
        min_count=template.output.min_count,
        noise_party=noise_party,
    )
