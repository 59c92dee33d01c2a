"""Template files: TOML or canonical bytes in, a checked Template out; its encoding and digest.

Reading a template checks it against the data model. The sections are read in
tessera.templates.scope (parameters, filters, dimensions) and .release (statistic,
privacy, output, access); the canonical dict is built in .canonical_dict.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tessera import canonical, schemas
from tessera.templates.canonical_dict import access_dict, privacy_dict, to_dict
from tessera.templates.fields import ID_RE, Fields
from tessera.templates.model import (
    StatisticKind,
    Template,
    TemplateError,
)
from tessera.templates.release import (
    MAX_ANALYSTS,
    MAX_CAP,
    MAX_EPSILON,
    MAX_RHO,
    read_access,
    read_output,
    read_privacy,
    read_statistic,
)
from tessera.templates.scope import (
    MAX_BOUND,
    MAX_CELLS,
    MAX_CODES,
    MAX_DIMS,
    MAX_FILTERS,
    MAX_LABELS,
    MAX_MONTHS,
    MAX_PARAMS,
    Context,
    check_all_used,
    group_by,
    read_filter,
    read_parameters,
)

__all__ = [
    "MAX_ANALYSTS",
    "MAX_BOUND",
    "MAX_CAP",
    "MAX_CELLS",
    "MAX_CODES",
    "MAX_DIMS",
    "MAX_EPSILON",
    "MAX_FILTERS",
    "MAX_LABELS",
    "MAX_MONTHS",
    "MAX_PARAMS",
    "MAX_RHO",
    "TEMPLATE_DIGEST_DOMAIN",
    "Head",
    "access_dict",
    "check_all_used",
    "digest",
    "digest_of_bytes",
    "encode",
    "group_by",
    "load_toml",
    "parse",
    "parse_canonical",
    "privacy_dict",
    "to_dict",
]

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

    params = read_parameters(f, source)
    ctx = Context(source, {p.name: p for p in params})
    filters = tuple(
        read_filter(t, ctx) for t in f.tables("filters", max_items=MAX_FILTERS, default=[])
    )
    dims = group_by(f, ctx)
    statistic = read_statistic(f.table("statistic"), ctx)
    privacy = read_privacy(f.table("privacy"))
    output = read_output(f.table("output"))
    access = read_access(f.table("access"))
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
