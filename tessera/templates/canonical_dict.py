"""A template as its canonical dict: the JSON-able form that is encoded, hashed and signed.

Any change to the dict changes template digests, and so voids every approval.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from tessera.templates.model import (
    ActiveOnFilter,
    BandsDim,
    BetweenFilter,
    CategoriesDim,
    DateParam,
    DateRef,
    Dimension,
    EnumParam,
    EqualsFilter,
    Filter,
    InFilter,
    Parameter,
    RangeFilter,
    Statistic,
    StatisticKind,
    Template,
)


def _date_ref(r: DateRef) -> str:
    return r.param if r.param is not None else (r.fixed or date.min).isoformat()


def param_dict(p: Parameter) -> dict[str, Any]:
    if isinstance(p, DateParam):
        return {
            "type": "date",
            "min": p.min.isoformat(),
            "max": p.max.isoformat(),
            "description": p.description,
        }
    if isinstance(p, EnumParam):
        return {"type": "enum", "values": list(p.values), "description": p.description}
    return {"type": "int", "min": p.min, "max": p.max, "description": p.description}


def _at_dict(at: DateRef | None, at_column: str | None) -> dict[str, Any]:
    if at_column is not None:
        return {"at_column": at_column}
    return {"at": _date_ref(at or DateRef())}


def filter_dict(x: Filter) -> dict[str, Any]:
    if isinstance(x, InFilter):
        d: dict[str, Any] = {"kind": "in", "column": x.column}
        if x.param is not None:
            d["param"] = x.param
        else:
            d["values"] = list(x.values)
        return d
    if isinstance(x, EqualsFilter):
        return {"kind": "equals", "column": x.column, "value": x.value}
    if isinstance(x, RangeFilter):
        return {"kind": "range", "column": x.column, "min": x.min, "max": x.max}
    if isinstance(x, BetweenFilter):
        return {
            "kind": "between",
            "column": x.column,
            "start": _date_ref(x.start),
            "end": _date_ref(x.end),
        }
    if isinstance(x, ActiveOnFilter):
        return {
            "kind": "active_on",
            "start_column": x.start_column,
            "end_column": x.end_column,
            "on": _date_ref(x.on),
        }
    return {
        "kind": "age",
        "birth_column": x.birth_column,
        "min": x.min,
        "max": x.max,
        **_at_dict(x.at, x.at_column),
    }


def dim_dict(x: Dimension) -> dict[str, Any]:
    if isinstance(x, CategoriesDim):
        d: dict[str, Any] = {
            "name": x.name,
            "kind": "categories",
            "column": x.column,
            "categories": [{"label": c.label, "codes": list(c.codes)} for c in x.categories],
        }
        if x.other is not None:
            d["other"] = x.other
        if x.unknown is not None:
            d["unknown"] = x.unknown
        return d
    if isinstance(x, BandsDim):
        d = {
            "name": x.name,
            "kind": "bands",
            "bands": [{"label": b.label, "min": b.min, "max": b.max} for b in x.bands],
        }
        if x.column is not None:
            d["column"] = x.column
        else:
            d["birth_column"] = x.birth_column
            d.update(_at_dict(x.at, x.at_column))
        if x.unknown is not None:
            d["unknown"] = x.unknown
        return d
    return {
        "name": x.name,
        "kind": "months",
        "column": x.column,
        "first": f"{x.first[0]:04d}-{x.first[1]:02d}",
        "last": f"{x.last[0]:04d}-{x.last[1]:02d}",
    }


def _stat_dict(s: Statistic) -> dict[str, Any]:
    if s.kind is StatisticKind.COUNT_UNITS:
        d: dict[str, Any] = {"kind": s.kind.value, "max_cells_per_unit": s.max_cells_per_unit}
        if s.choose is not None:
            d["choose"] = s.choose.value
            d["by"] = s.by
        return d
    if s.kind is StatisticKind.COUNT_RECORDS:
        return {"kind": s.kind.value, "max_records_per_unit": s.max_records_per_unit}
    return {
        "kind": s.kind.value,
        "column": s.column,
        "lower": s.lower,
        "upper": s.upper,
        "max_records_per_unit": s.max_records_per_unit,
    }


def privacy_dict(t: Template) -> dict[str, Any]:
    p = t.privacy
    return {"epsilon": p.epsilon} if p.epsilon is not None else {"rho": p.rho}


def access_dict(t: Template) -> dict[str, Any]:
    return {
        "analysts": [{"name": a.name, "key": a.key} for a in t.access.analysts],
        "expires": t.access.expires.isoformat(),
        "quorum": t.access.quorum,
        "per_node_breakdown": t.access.per_node_breakdown,
        # Only when declared, so templates without it keep their digests.
        **({"participants": list(t.access.participants)} if t.access.participants else {}),
        **({"threshold": t.access.threshold} if t.access.threshold else {}),
    }


def to_dict(t: Template) -> dict[str, Any]:
    """The template as a JSON-able dict: the form that is hashed and signed."""
    if t.overlap is not None:
        from tessera.templates import overlap  # imports this module

        return overlap.to_dict(t)
    return {
        "id": t.id,
        "version": t.version,
        "title": t.title,
        "purpose": t.purpose,
        "description": t.description,
        "legal_basis": t.legal_basis,
        "data": {
            "dataset": t.dataset,
            "schema_version": t.schema_version,
            "source": t.source,
            "privacy_unit": t.privacy_unit,
        },
        "parameters": {p.name: param_dict(p) for p in t.parameters},
        "filters": [filter_dict(x) for x in t.filters],
        "group_by": [dim_dict(x) for x in t.group_by],
        "statistic": _stat_dict(t.statistic),
        "privacy": privacy_dict(t),
        "output": {"min_count": t.output.min_count, "round_to": t.output.round_to},
        "access": access_dict(t),
    }
