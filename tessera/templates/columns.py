"""Which source columns a template reads: its filters, dimensions and statistic."""

from __future__ import annotations

from tessera.templates.model import (
    ActiveOnFilter,
    AgeFilter,
    BandsDim,
    BetweenFilter,
    CategoriesDim,
    Dimension,
    EqualsFilter,
    InFilter,
    MonthsDim,
    RangeFilter,
    Template,
)


def dimension_columns(d: Dimension) -> frozenset[str]:
    if isinstance(d, CategoriesDim | MonthsDim):
        return frozenset({d.column})
    assert isinstance(d, BandsDim)
    return frozenset(c for c in (d.column, d.birth_column, d.at_column) if c is not None)


def columns_used(t: Template) -> frozenset[str]:
    out: set[str] = set()
    for f in t.filters:
        if isinstance(f, InFilter | EqualsFilter | RangeFilter | BetweenFilter):
            out.add(f.column)
        elif isinstance(f, ActiveOnFilter):
            out |= {f.start_column, f.end_column}
        elif isinstance(f, AgeFilter):
            out.add(f.birth_column)
            if f.at_column is not None:
                out.add(f.at_column)
    for d in t.group_by:
        out |= dimension_columns(d)
    s = t.statistic
    out |= {c for c in (s.column, s.by) if c is not None}
    return frozenset(out)
