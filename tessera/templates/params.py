"""Binding an analyst's parameter values to a template's declared slots.

Values arrive as JSON (dates as YYYY-MM-DD text). Each must be of its slot's
type and inside its declared domain; anything else is refused before any data
is touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from tessera.templates.model import DateParam, EnumParam, IntParam, ParamValue, Template


class ParamError(ValueError):
    """A parameter value outside its declared domain (INVALID_ARGUMENT)."""


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def bind(template: Template, raw: Mapping[str, Any]) -> dict[str, ParamValue]:
    if not isinstance(raw, Mapping):
        raise ParamError("parameters must be an object")
    declared = {p.name for p in template.parameters}
    unknown = sorted(k for k in raw if k not in declared)
    if unknown:
        raise ParamError(f"parameter {_quote(unknown[0])} is not declared by the template")
    out: dict[str, ParamValue] = {}
    for p in template.parameters:
        if p.name not in raw:
            raise ParamError(f"parameter {p.name} is required")
        v = raw[p.name]
        if isinstance(p, DateParam):
            d = _date(v)
            if d is None:
                raise ParamError(f"parameter {p.name} must be a date YYYY-MM-DD")
            if not p.min <= d <= p.max:
                raise ParamError(
                    f"parameter {p.name} must be between {p.min.isoformat()} and "
                    f"{p.max.isoformat()}"
                )
            out[p.name] = d
        elif isinstance(p, EnumParam):
            if not isinstance(v, str) or v not in p.values:
                raise ParamError(f"parameter {p.name} must be one of {', '.join(p.values)}")
            out[p.name] = v
        elif isinstance(p, IntParam):
            if isinstance(v, bool) or not isinstance(v, int) or not p.min <= v <= p.max:
                raise ParamError(f"parameter {p.name} must be an integer from {p.min} to {p.max}")
            out[p.name] = v
    return out


def to_json(values: Mapping[str, ParamValue]) -> dict[str, str | int]:
    return {k: v.isoformat() if isinstance(v, date) else v for k, v in sorted(values.items())}


def _date(v: Any) -> date | None:
    if not isinstance(v, str) or not _DATE.fullmatch(v):
        return None
    try:
        return date.fromisoformat(v)
    except ValueError:
        return None


def _quote(name: str) -> str:
    """Echo an unknown parameter name safely: printable, short."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in name[:40])
    return repr(clean)
