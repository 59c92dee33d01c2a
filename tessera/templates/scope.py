"""Reading a template's scope: its parameters, filters and group_by dimensions.

Every column named must exist in the source with the right type, every code must
be in the column's code list, every bound must be finite and the domain small enough.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from datetime import date

from tessera import schemas
from tessera.templates.fields import Fields, parse_date, safe_key
from tessera.templates.model import (
    ActiveOnFilter,
    AgeFilter,
    Band,
    BandsDim,
    BetweenFilter,
    CategoriesDim,
    Category,
    DateParam,
    DateRef,
    Dimension,
    EnumParam,
    EqualsFilter,
    Filter,
    InFilter,
    IntParam,
    MonthsDim,
    Parameter,
    RangeFilter,
    TemplateError,
)

MAX_CELLS = 10_000
MAX_LABELS = 1_000
MAX_CODES = 500
MAX_PARAMS = 16
MAX_FILTERS = 16
MAX_DIMS = 3
MAX_MONTHS = 120
MAX_BOUND = 10**9


def group_by(f: Fields, ctx: Context) -> tuple[Dimension, ...]:
    dims = tuple(_dimension(t, ctx) for t in f.tables("group_by", max_items=MAX_DIMS, default=[]))
    names = [dm.name for dm in dims]
    if len(set(names)) != len(names):
        raise TemplateError("group_by", "dimension names must be distinct")
    n_cells = 1
    for dm in dims:
        n_cells *= len(dm.labels)
    if n_cells > MAX_CELLS:
        raise TemplateError("group_by", f"domain has {n_cells} cells; at most {MAX_CELLS}")
    return dims


def check_all_used(params: Mapping[str, Parameter], used: set[str]) -> None:
    unused = sorted(set(params) - used)
    if unused:
        raise TemplateError(f"parameters.{unused[0]}", "is declared but never used")


class Context:
    """What a section is read against: the source's columns and the declared parameters."""

    def __init__(
        self, source: schemas.Source, params: Mapping[str, Parameter], used: set[str] | None = None
    ) -> None:
        self.source = source
        self.params = params
        # Shared between the contexts of an overlap's datasets: a parameter may be used by any.
        self.used: set[str] = set() if used is None else used

    def column(self, f: Fields, key: str, *types: schemas.ColumnType) -> schemas.Column:
        name = f.text(key, max_len=64)
        col = self.source.column(name)
        if col is None:
            raise TemplateError(f.at(key), f"source {self.source.name} has no column {name!r}")
        if types and col.type not in types:
            want = " or ".join(t.value for t in types)
            raise TemplateError(f.at(key), f"column {name} is {col.type.value}; need {want}")
        return col

    def param(self, f: Fields, key: str, kind: type) -> Parameter:
        name = f.name(key)
        p = self.params.get(name)
        if p is None:
            raise TemplateError(f.at(key), f"names no declared parameter {name!r}")
        if not isinstance(p, kind):
            raise TemplateError(f.at(key), f"parameter {name} has the wrong type here")
        self.used.add(name)
        return p

    def date_ref(self, f: Fields, key: str) -> DateRef:
        """A date: a parameter name, or a fixed YYYY-MM-DD date."""
        v = f.raw(key)
        if isinstance(v, date) or (isinstance(v, str) and v[:1].isdigit()):
            return DateRef(fixed=parse_date(v, f.at(key)))
        return DateRef(param=self.param(f, key, DateParam).name)


def read_parameters(f: Fields, source: schemas.Source | None) -> tuple[Parameter, ...]:
    raw = f.raw("parameters", {})
    if not isinstance(raw, Mapping):
        raise TemplateError("parameters", "must be a table of parameter tables")
    if len(raw) > MAX_PARAMS:
        raise TemplateError("parameters", f"at most {MAX_PARAMS} parameters")
    out: list[Parameter] = []
    for name in sorted(raw):
        # The name is the sender's text until checked: errors show it short and printable.
        shown = safe_key(name)
        p = Fields(raw[name], f"parameters.{shown}")
        Fields({shown: name}, "parameters").name(shown)  # the error names parameters.<name>
        typ = p.text("type", max_len=10)
        desc = p.text("description", default="")
        if typ == "date":
            lo, hi = p.date("min"), p.date("max")
            if lo > hi:
                raise TemplateError(p.at("min"), "must not be after max")
            out.append(DateParam(name, lo, hi, desc))
        elif typ == "enum":
            out.append(EnumParam(name, p.labels("values", max_items=MAX_CODES), desc))
        elif typ == "int":
            lo_i = p.integer("min", lo=-MAX_BOUND, hi=MAX_BOUND)
            hi_i = p.integer("max", lo=-MAX_BOUND, hi=MAX_BOUND)
            if lo_i > hi_i:
                raise TemplateError(p.at("min"), "must not be above max")
            out.append(IntParam(name, lo_i, hi_i, desc))
        else:
            raise TemplateError(p.at("type"), "must be date, enum or int")
        p.done()
    return tuple(out)


def _codes_ok(col: schemas.Column, codes: tuple[str, ...], where: str) -> None:
    if col.type is schemas.ColumnType.CODE:
        for i, c in enumerate(codes):
            if c not in col.codes:
                raise TemplateError(f"{where}[{i}]", f"is not a code of column {col.name}")


def read_filter(f: Fields, ctx: Context) -> Filter:
    kind = f.text("kind", max_len=20)
    C = schemas.ColumnType
    result: Filter
    if kind == "in":
        col = ctx.column(f, "column", C.CODE, C.TEXT)
        if f.has("param"):
            p = ctx.param(f, "param", EnumParam)
            assert isinstance(p, EnumParam)
            _codes_ok(col, p.values, f"parameters.{p.name}.values")
            result = InFilter(col.name, param=p.name)
        else:
            values = f.labels("values", max_items=MAX_CODES)
            _codes_ok(col, values, f.at("values"))
            result = InFilter(col.name, values=values)
    elif kind == "equals":
        col = ctx.column(f, "column", C.BOOL)
        result = EqualsFilter(col.name, f.boolean("value"))
    elif kind == "range":
        col = ctx.column(f, "column", C.INT)
        lo = f.integer("min", lo=-MAX_BOUND, hi=MAX_BOUND)
        hi = f.integer("max", lo=-MAX_BOUND, hi=MAX_BOUND)
        if lo > hi:
            raise TemplateError(f.at("min"), "must not be above max")
        result = RangeFilter(col.name, lo, hi)
    elif kind == "between":
        col = ctx.column(f, "column", C.DATE)
        result = BetweenFilter(col.name, ctx.date_ref(f, "start"), ctx.date_ref(f, "end"))
    elif kind == "active_on":
        start = ctx.column(f, "start_column", C.DATE)
        end = ctx.column(f, "end_column", C.DATE)
        result = ActiveOnFilter(start.name, end.name, ctx.date_ref(f, "on"))
    elif kind == "age":
        birth = ctx.column(f, "birth_column", C.DATE)
        at, at_col = _at(f, ctx)
        lo = f.integer("min", lo=0, hi=150)
        hi = f.integer("max", lo=0, hi=150)
        if lo > hi:
            raise TemplateError(f.at("min"), "must not be above max")
        result = AgeFilter(birth.name, at, at_col, lo, hi)
    elif kind in ("all", "any", "not"):
        raise TemplateError(f.at("kind"), "nested filters are not supported; filters are ANDed")
    else:
        raise TemplateError(
            f.at("kind"), "must be one of in, equals, range, between, active_on, age"
        )
    f.done()
    return result


def _at(f: Fields, ctx: Context) -> tuple[DateRef, str | None]:
    """Age is taken at a date parameter or fixed date (`at`), or at a date column (`at_column`)."""
    if f.has("at_column"):
        col = ctx.column(f, "at_column", schemas.ColumnType.DATE)
        if f.has("at"):
            raise TemplateError(f.at("at"), "give at or at_column, not both")
        return DateRef(), col.name
    return ctx.date_ref(f, "at"), None


def _dimension(f: Fields, ctx: Context) -> Dimension:
    name = f.name("name")
    kind = f.text("kind", max_len=20)
    C = schemas.ColumnType
    result: Dimension
    if kind == "categories":
        col = ctx.column(f, "column", C.CODE)
        cats = []
        seen_codes: set[str] = set()
        for t in f.tables("categories", max_items=MAX_LABELS):
            lab = t.label("label")
            codes = t.labels("codes", max_items=MAX_CODES)
            _codes_ok(col, codes, t.at("codes"))
            overlap = seen_codes & set(codes)
            if overlap:
                raise TemplateError(t.at("codes"), "a code may belong to only one category")
            seen_codes |= set(codes)
            cats.append(Category(lab, codes))
            t.done()
        if not cats:
            raise TemplateError(f.at("categories"), "must not be empty")
        other = f.label("other") if f.has("other") else None
        result = CategoriesDim(name, col.name, tuple(cats), other, _unknown(f))
    elif kind == "bands":
        bands = []
        for t in f.tables("bands", max_items=MAX_LABELS):
            lo = t.integer("min", lo=-MAX_BOUND, hi=MAX_BOUND)
            hi = t.integer("max", lo=-MAX_BOUND, hi=MAX_BOUND)
            if lo > hi:
                raise TemplateError(t.at("min"), "must not be above max")
            bands.append(Band(t.label("label"), lo, hi))
            t.done()
        if not bands:
            raise TemplateError(f.at("bands"), "must not be empty")
        ordered = sorted(bands, key=lambda b: b.min)
        for a, b in itertools.pairwise(ordered):
            if b.min <= a.max:
                raise TemplateError(f.at("bands"), "bands must not overlap")
        if f.has("birth_column"):
            birth = ctx.column(f, "birth_column", C.DATE)
            at, at_col = _at(f, ctx)
            result = BandsDim(name, tuple(bands), None, birth.name, at, at_col, _unknown(f))
        else:
            col = ctx.column(f, "column", C.INT)
            result = BandsDim(name, tuple(bands), col.name, unknown=_unknown(f))
    elif kind == "months":
        col = ctx.column(f, "column", C.DATE)
        first, last = _month(f, "first"), _month(f, "last")
        if first > last:
            raise TemplateError(f.at("first"), "must not be after last")
        n = (last[0] - first[0]) * 12 + last[1] - first[1] + 1
        if n > MAX_MONTHS:
            raise TemplateError(f.at("last"), f"spans {n} months; at most {MAX_MONTHS}")
        result = MonthsDim(name, col.name, first, last)
    else:
        raise TemplateError(f.at("kind"), "must be categories, bands or months")
    _distinct_labels(f, result)
    f.done()
    return result


def _unknown(f: Fields) -> str | None:
    """The label of the cell for rows whose value is missing, if the dimension has one."""
    return f.label("unknown") if f.has("unknown") else None


def _distinct_labels(f: Fields, d: Dimension) -> None:
    """Labels must be distinct; the error names the list, `other` or `unknown` that clashes.
    (Months are distinct by construction.)"""
    if isinstance(d, MonthsDim):
        return
    if isinstance(d, CategoriesDim):
        steps = [("categories", tuple(c.label for c in d.categories)), ("other", (d.other,))]
    else:
        steps = [("bands", tuple(b.label for b in d.bands))]
    steps.append(("unknown", (d.unknown,)))
    seen: list[str] = []
    for key, labels in steps:
        for label in labels:
            if label is None:
                continue
            if label in seen:
                raise TemplateError(f.at(key), "labels must be distinct")
            seen.append(label)


def _month(f: Fields, key: str) -> tuple[int, int]:
    v = f.text(key, max_len=7)
    # ASCII digits only: int() alone would also take " 4", "+4", "0_4" and non-ASCII digits.
    ok = re.fullmatch(r"[0-9]{4}-[0-9]{2}", v) is not None
    y, m = (int(v[:4]), int(v[5:7])) if ok else (0, 0)
    if not ok or not (1900 <= y <= 2200 and 1 <= m <= 12):
        raise TemplateError(f.at(key), "must be a month YYYY-MM")
    return y, m
