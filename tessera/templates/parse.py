"""Template files: TOML in, checked dataclasses out, and the canonical encoding.

Reading a template checks it against the data model: every column must exist
in the source with the right type, every code must be in the column's code
list, every bound must be finite and the domain small enough.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from tessera import canonical, keys, schemas
from tessera.templates.fields import ID_RE, Fields, parse_date, safe_key
from tessera.templates.model import (
    RESERVED_STATISTICS,
    Access,
    ActiveOnFilter,
    AgeFilter,
    Analyst,
    Band,
    BandsDim,
    BetweenFilter,
    CategoriesDim,
    Category,
    Choice,
    DateParam,
    DateRef,
    Dimension,
    EnumParam,
    EqualsFilter,
    Filter,
    InFilter,
    IntParam,
    MonthsDim,
    Output,
    Parameter,
    Privacy,
    RangeFilter,
    Statistic,
    StatisticKind,
    Template,
    TemplateError,
)

MAX_CELLS = 10_000
MAX_LABELS = 1_000
MAX_CODES = 500
MAX_PARAMS = 16
MAX_FILTERS = 16
MAX_DIMS = 3
MAX_ANALYSTS = 100
MAX_MONTHS = 120
MAX_CAP = 1_000
MAX_BOUND = 10**9
# Costs outside these limits are refused as unsafe or meaningless.
MAX_EPSILON = 10.0
MAX_RHO = 10.0
TEMPLATE_DIGEST_DOMAIN = b"tessera/v1/template\x00"


def load_toml(text: str) -> Template:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TemplateError("template", f"is not valid TOML: {e}") from None
    return parse(data)


def parse_canonical(data: bytes) -> Template:
    """Parse canonical bytes, refusing any encoding that is not exactly canonical."""
    try:
        value = canonical.decode(data, max_bytes=256 * 1024)
    except canonical.CanonicalError as e:
        raise TemplateError("template", str(e)) from None
    template = parse(value)
    if encode(template) != data:
        raise TemplateError("template", "bytes are not the canonical encoding of the template")
    return template


def encode(template: Template) -> bytes:
    return canonical.encode(to_dict(template))


def digest(template: Template) -> str:
    return canonical.sha256_hex(TEMPLATE_DIGEST_DOMAIN + encode(template))


def digest_of_bytes(data: bytes) -> str:
    return canonical.sha256_hex(TEMPLATE_DIGEST_DOMAIN + data)


def parse(data: Any) -> Template:
    f = Fields(data, "")
    tid = f.text("id", max_len=80)
    if not ID_RE.match(tid):
        raise TemplateError("id", "must be lower-case letters, digits and '-'")
    version = f.integer("version", lo=1, hi=10_000)
    title = f.text("title", max_len=200)
    purpose = f.text("purpose", max_len=40)
    if purpose not in schemas.PURPOSES:
        raise TemplateError("purpose", f"must be one of {', '.join(schemas.PURPOSES)}")
    description = f.text("description", default="")
    legal_basis = f.text("legal_basis")
    if not legal_basis.strip():
        raise TemplateError("legal_basis", "must not be empty")
    if _is_overlap(data):
        from tessera.templates import overlap  # imports this module

        head = Head(tid, version, title, purpose, description, legal_basis)
        return overlap.parse_overlap(f, head)

    d = f.table("data")
    ds_name = d.text("dataset", max_len=40)
    ds = schemas.dataset(ds_name)
    if ds is None:
        raise TemplateError(d.at("dataset"), "is not a dataset of the data model")
    schema_version = d.integer("schema_version", lo=1, hi=1000)
    if schema_version != ds.schema_version:
        raise TemplateError(d.at("schema_version"), f"must be {ds.schema_version}")
    src_name = d.text("source", max_len=40)
    source = ds.sources.get(src_name)
    if source is None:
        raise TemplateError(d.at("source"), f"is not a source of dataset {ds_name}")
    unit = d.text("privacy_unit", max_len=64)
    if unit != source.unit:
        raise TemplateError(d.at("privacy_unit"), f"must be {source.unit} for {ds_name}")
    d.done()

    params = _parameters(f, source)
    ctx = _Ctx(source, {p.name: p for p in params})
    filters = tuple(_filter(t, ctx) for t in f.tables("filters", max_items=MAX_FILTERS, default=[]))
    dims = group_by(f, ctx)
    statistic = _statistic(f.table("statistic"), ctx)
    privacy = _privacy(f.table("privacy"))
    output = _output(f.table("output"))
    access = _access(f.table("access"))
    check_all_used(ctx.params, ctx.used)
    f.done()
    return Template(
        id=tid,
        version=version,
        title=title,
        purpose=purpose,
        description=description,
        legal_basis=legal_basis,
        dataset=ds_name,
        schema_version=schema_version,
        source=src_name,
        privacy_unit=unit,
        parameters=params,
        filters=filters,
        group_by=dims,
        statistic=statistic,
        privacy=privacy,
        output=output,
        access=access,
    )


@dataclass(frozen=True)
class Head:
    """The fields every template starts with, read before its data."""

    id: str
    version: int
    title: str
    purpose: str
    description: str
    legal_basis: str


def _is_overlap(data: Any) -> bool:
    """Whether this is an overlap template (read without consuming any field)."""
    stat = data.get("statistic") if isinstance(data, Mapping) else None
    kind = stat.get("kind") if isinstance(stat, Mapping) else None
    if kind != StatisticKind.OVERLAP_COUNT.value:
        if isinstance(data, Mapping) and "overlap" in data:
            raise TemplateError("overlap", "applies to statistic overlap_count only")
        return False
    if "overlap" not in data:
        raise TemplateError(
            "statistic.kind",
            "overlap_count needs an [overlap] table naming its datasets ([[overlap.datasets]])",
        )
    return True


def group_by(f: Fields, ctx: _Ctx) -> tuple[Dimension, ...]:
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


class _Ctx:
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


def _parameters(f: Fields, source: schemas.Source | None) -> tuple[Parameter, ...]:
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


def _filter(f: Fields, ctx: _Ctx) -> Filter:
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


def _at(f: Fields, ctx: _Ctx) -> tuple[DateRef, str | None]:
    """Age is taken at a date parameter or fixed date (`at`), or at a date column (`at_column`)."""
    if f.has("at_column"):
        col = ctx.column(f, "at_column", schemas.ColumnType.DATE)
        if f.has("at"):
            raise TemplateError(f.at("at"), "give at or at_column, not both")
        return DateRef(), col.name
    return ctx.date_ref(f, "at"), None


def _dimension(f: Fields, ctx: _Ctx) -> Dimension:
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


def _statistic(f: Fields, ctx: _Ctx) -> Statistic:
    kind_text = f.text("kind", max_len=20)
    if kind_text in RESERVED_STATISTICS:
        raise TemplateError(f.at("kind"), f"{kind_text} is reserved and not supported yet")
    try:
        kind = StatisticKind(kind_text)
    except ValueError:
        kind = None
    if kind is None or kind is StatisticKind.OVERLAP_COUNT:
        raise TemplateError(
            f.at("kind"), "must be count_units, count_records, sum, mean or overlap_count"
        )
    if kind is not StatisticKind.COUNT_UNITS:
        for key in ("choose", "by"):
            if f.has(key):
                raise TemplateError(
                    f.at(key),
                    "applies to count_units only; records under a cap are kept in the "
                    "node's keyed pseudo-random order",
                )
    if kind is StatisticKind.COUNT_UNITS:
        cap = f.integer("max_cells_per_unit", lo=1, hi=MAX_CAP)
        choose, by = _choice(f, ctx)
        stat = Statistic(kind, max_cells_per_unit=cap, choose=choose, by=by)
    elif kind is StatisticKind.COUNT_RECORDS:
        stat = Statistic(
            kind, max_records_per_unit=f.integer("max_records_per_unit", lo=1, hi=MAX_CAP)
        )
    else:
        col = ctx.column(f, "column", schemas.ColumnType.INT)
        if not f.has("lower") or not f.has("upper"):
            raise TemplateError(
                f.at("upper"), f"a {kind.value} needs finite lower and upper bounds"
            )
        lo = f.integer("lower", lo=-MAX_BOUND, hi=MAX_BOUND)
        hi = f.integer("upper", lo=-MAX_BOUND, hi=MAX_BOUND)
        if lo > hi:
            raise TemplateError(f.at("lower"), "must not be above upper")
        if lo == hi == 0:
            raise TemplateError(f.at("upper"), "bounds must not both be zero")
        cap = f.integer("max_records_per_unit", lo=1, hi=MAX_CAP)
        stat = Statistic(kind, max_records_per_unit=cap, column=col.name, lower=lo, upper=hi)
    f.done()
    return stat


def _choice(f: Fields, ctx: _Ctx) -> tuple[Choice | None, str | None]:
    """`choose` (latest or earliest) and its date column `by`, both or neither."""
    if not f.has("choose"):
        if f.has("by"):
            raise TemplateError(f.at("by"), 'needs choose = "latest" or "earliest" with it')
        return None, None
    text = f.text("choose", max_len=20)
    try:
        choose = Choice(text)
    except ValueError:
        raise TemplateError(
            f.at("choose"),
            "must be latest or earliest (leave it out for the keyed pseudo-random choice)",
        ) from None
    if not f.has("by"):
        raise TemplateError(f.at("by"), "is required with choose: a date column of the source")
    col = ctx.column(f, "by", schemas.ColumnType.DATE)
    return choose, col.name


def _privacy(f: Fields) -> Privacy:
    has_e, has_r = f.has("epsilon"), f.has("rho")
    if has_e == has_r:
        raise TemplateError("privacy", "give exactly one of epsilon (pure DP) or rho (zCDP)")
    key, limit = ("epsilon", MAX_EPSILON) if has_e else ("rho", MAX_RHO)
    v = f.number(key)
    if not 0 < v <= limit:
        raise TemplateError(f.at(key), f"must be above 0 and at most {limit}")
    f.done()
    return Privacy(epsilon=v) if has_e else Privacy(rho=v)


def _output(f: Fields) -> Output:
    out = Output(
        min_count=f.integer("min_count", lo=0, hi=1000),
        round_to=f.integer("round_to", lo=1, hi=1000),
    )
    f.done()
    return out


def _access(f: Fields) -> Access:
    analysts = []
    for t in f.tables("analysts", max_items=MAX_ANALYSTS):
        key = t.text("key", max_len=80)
        try:
            keys.PublicKey.from_id(key)
        except keys.KeyError_ as e:
            raise TemplateError(t.at("key"), str(e)) from None
        analysts.append(Analyst(t.text("name", max_len=200), key))
        t.done()
    if not analysts:
        raise TemplateError(f.at("analysts"), "must name at least one analyst")
    if len({a.key for a in analysts}) != len(analysts):
        raise TemplateError(f.at("analysts"), "has a key listed twice")
    access = Access(
        analysts=tuple(analysts),
        expires=f.date("expires"),
        quorum=f.integer("quorum", lo=1, hi=1000),
        per_node_breakdown=f.boolean("per_node_breakdown"),
        participants=tuple(sorted(f.labels("participants", max_items=1000)))
        if f.has("participants")
        else (),
        threshold=f.integer("threshold", lo=2, hi=1000) if f.has("threshold") else 0,
    )
    if access.participants and len(access.participants) < access.quorum:
        raise TemplateError(f.at("participants"), "lists fewer organisations than the quorum")
    if access.threshold and access.threshold < access.quorum:
        raise TemplateError(f.at("threshold"), "is less than the quorum")
    n_participants = len(access.participants)
    if access.threshold and n_participants and 2 * access.threshold <= n_participants:
        raise TemplateError(f.at("threshold"), "must be more than half of the participants")
    f.done()
    return access


# --- canonical dict -------------------------------------------------------------------


def _date_ref(r: DateRef) -> str:
    return r.param if r.param is not None else (r.fixed or date.min).isoformat()


def _param_dict(p: Parameter) -> dict[str, Any]:
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


def _filter_dict(x: Filter) -> dict[str, Any]:
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


def _dim_dict(x: Dimension) -> dict[str, Any]:
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
        "parameters": {p.name: _param_dict(p) for p in t.parameters},
        "filters": [_filter_dict(x) for x in t.filters],
        "group_by": [_dim_dict(x) for x in t.group_by],
        "statistic": _stat_dict(t.statistic),
        "privacy": privacy_dict(t),
        "output": {"min_count": t.output.min_count, "round_to": t.output.round_to},
        "access": access_dict(t),
    }
