"""Every field of a template, in plain words, for the people who sign it.

`describe(template)` gives sections of (label, text) pairs that together name every
value of the canonical form: the filters with their columns and bounds, each band's
bounds, each category's codes, the per-unit caps and value bounds, the cost, and who
may ask until when. `template show`, `template review` and the HTML pages all use it,
and a test checks it against the canonical JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.templates.model import (
    ActiveOnFilter,
    AgeFilter,
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
    MonthsDim,
    OverlapMatch,
    Parameter,
    RangeFilter,
    StatisticKind,
    Template,
)


@dataclass(frozen=True)
class Section:
    heading: str
    fields: tuple[tuple[str, str], ...]


def cost(t: Template) -> str:
    p = t.privacy
    if p.epsilon is not None:
        return f"epsilon {p.epsilon:g} (pure differential privacy) on each node's ledger"
    return f"rho {p.rho:g} (zero-concentrated differential privacy) on each node's ledger"


def cost_short(t: Template) -> str:
    p = t.privacy
    return f"epsilon={p.epsilon:g}" if p.epsilon is not None else f"rho={p.rho:g}"


def parameter(p: Parameter) -> str:
    if isinstance(p, DateParam):
        text = f"a date from {p.min.isoformat()} to {p.max.isoformat()}"
    elif isinstance(p, EnumParam):
        text = "one of: " + ", ".join(p.values)
    else:
        text = f"a whole number from {p.min} to {p.max}"
    return f"{text}. {p.description}" if p.description else text


def date_ref(d: DateRef) -> str:
    if d.param is not None:
        return f"the date given as parameter {d.param}"
    assert d.fixed is not None
    return d.fixed.isoformat()


def filter_text(f: Filter) -> tuple[str, str]:
    if isinstance(f, InFilter):
        if f.param is not None:
            return ("only rows where", f"{f.column} equals the value given as parameter {f.param}")
        return ("only rows where", f"{f.column} is one of: {', '.join(f.values)}")
    if isinstance(f, EqualsFilter):
        return ("only rows where", f"{f.column} is {'true' if f.value else 'false'}")
    if isinstance(f, RangeFilter):
        return ("only rows where", f"{f.column} is from {f.min} to {f.max} inclusive")
    if isinstance(f, BetweenFilter):
        return (
            "only rows where",
            f"{f.column} falls from {date_ref(f.start)} to {date_ref(f.end)} inclusive",
        )
    if isinstance(f, ActiveOnFilter):
        return (
            "only records open on",
            f"{date_ref(f.on)}: {f.start_column} on or before it, and {f.end_column} "
            "after it or empty",
        )
    assert isinstance(f, AgeFilter)
    at = f.at_column if f.at_column is not None else date_ref(f.at)
    return (
        "only units aged",
        f"{f.min} to {f.max} completed years (from {f.birth_column}) at {at}",
    )


def dimension(d: Dimension) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(d, CategoriesDim):
        out.append((f"{d.name}", f"categories of {d.column}, {len(d.labels)} cells"))
        for c in d.categories:
            out.append((f"  {c.label}", "codes " + ", ".join(c.codes)))
        missing = "" if d.unknown is not None else " (a missing code counts as not listed)"
        if d.other is not None:
            out.append((f"  {d.other}", f"every other code{missing}"))
        else:
            out.append(("  other codes", f"left out (not counted){missing}"))
        if d.unknown is not None:
            out.append((f"  {d.unknown}", "a missing (empty) code"))
    elif isinstance(d, BandsDim):
        if d.column is not None:
            over = f"bands of {d.column}"
        else:
            at = d.at_column if d.at_column is not None else date_ref(d.at or DateRef())
            over = f"age bands: completed years from {d.birth_column} at {at}"
        out.append((f"{d.name}", f"{over}, {len(d.labels)} cells"))
        for b in d.bands:
            out.append((f"  {b.label}", f"{b.min} to {b.max}"))
        if d.unknown is not None:
            out.append((f"  {d.unknown}", "a missing value (or missing date)"))
        else:
            out.append(("  a missing value", "left out (not counted)"))
        out.append(("  outside every band", "left out (not counted)"))
    else:
        assert isinstance(d, MonthsDim)
        first, last = d.labels[0], d.labels[-1]
        months = f"calendar months of {d.column}, {first} to {last}"
        out.append((f"{d.name}", f"{months}, {len(d.labels)} cells"))
    return out


def overlap_statistic(t: Template) -> list[tuple[str, str]]:
    o = t.overlap
    assert o is not None
    names = [d.dataset for d in o.datasets]
    cat = names[o.categories_from]
    if o.match is OverlapMatch.ALL:
        what = f"children in every one of {', '.join(names)} (match all)"
    elif o.match is OverlapMatch.A_NOT_B:
        assert o.b is not None
        what = f"children in {cat} but not in {names[o.b]} (match a_not_b, b = {names[o.b]})"
    else:
        what = (
            f"children in at least k = {o.k} of {', '.join(names)} (match at_least_k); "
            f"one more cell counts those not in {cat}"
        )
    out = [
        ("what is counted", f"{what} (statistic overlap_count)"),
        ("linked by", "NHS number only, normalised and check-digit validated at each node"),
        ("cells from", f"the {cat} record (categories_from = {cat})"),
        ("per-child contribution", "one child is one element per agency, whatever its records"),
        ("not linkable", "records without a valid NHS number, counted per dataset with noise"),
    ]
    s = t.statistic
    if s.choose is not None:
        out.append(("which record decides", f"the {s.choose.value} record by {s.by}"))
    return out


def statistic(t: Template) -> list[tuple[str, str]]:
    if t.overlap is not None:
        return overlap_statistic(t)
    s = t.statistic
    unit = t.privacy_unit
    if s.kind is StatisticKind.COUNT_UNITS:
        if s.choose is not None:
            which = f"the {s.choose.value} record by {s.by} (choose {s.choose.value})"
        else:
            which = "a keyed pseudo-random order of the unit's records"
        return [
            ("what is counted", f"distinct {unit} (statistic count_units)"),
            ("per-unit cap", f"one {unit} is counted in at most {s.max_cells_per_unit} cell(s)"),
            ("which record decides", which),
        ]
    rows = {
        StatisticKind.COUNT_RECORDS: ("what is counted", "records (statistic count_records)"),
        StatisticKind.SUM: ("what is added up", f"{s.column} (statistic sum)"),
        StatisticKind.MEAN: ("what is averaged", f"{s.column} per record (statistic mean)"),
    }
    out = [
        rows[s.kind],
        (
            "per-unit cap",
            f"at most {s.max_records_per_unit} record(s) of one {unit} are used",
        ),
    ]
    if s.kind is not StatisticKind.COUNT_RECORDS:
        out.append(("value bounds", f"each value is clamped to {s.lower} to {s.upper}"))
    return out


def describe(t: Template, digest: str) -> list[Section]:
    params = [(p.name, parameter(p)) for p in t.parameters] or [("(none)", "no parameters")]
    filters = [filter_text(f) for f in t.filters] or [("(none)", "every row of the source")]
    dims: list[tuple[str, str]] = []
    for d in t.group_by:
        dims.extend(dimension(d))
    if not dims:
        dims = [("(none)", "one cell: a single figure")]
    analysts = [(a.name, a.key) for a in t.access.analysts]
    data: tuple[tuple[str, str], ...] = (
        ("dataset", f"{t.dataset} (schema version {t.schema_version})"),
        ("source table", t.source),
        ("privacy unit", f"{t.privacy_unit}: each is protected as one person"),
    )
    quorum = f"at least {t.access.quorum} node(s) must answer"
    if t.overlap is not None:
        data, filters = (), []
        for i, od in enumerate(t.overlap.datasets, 1):
            data += (
                (
                    f"dataset {i}",
                    f"{od.dataset} (schema version {od.schema_version}), source {od.source}, "
                    f"linkage key {od.linkage_key}",
                ),
            )
            rows = [filter_text(f) for f in od.filters] or [("all rows", "of the source")]
            filters += [(f"{od.dataset}: {label}", text) for label, text in rows]
        quorum = f"all {t.access.quorum} datasets' nodes must take part"
    return [
        Section(
            "The template",
            (
                ("id", t.id),
                ("version", str(t.version)),
                ("title", t.title),
                ("digest", digest),
                ("purpose", t.purpose),
                ("legal basis", t.legal_basis),
                ("description", " ".join(t.description.split())),
            ),
        ),
        Section("The data", data),
        Section("Parameters the analyst chooses", tuple(params)),
        Section("Rows used", tuple(filters)),
        Section(f"Cells ({t.n_cells} in all, every one shown)", tuple(dims)),
        Section("The statistic", tuple(statistic(t))),
        Section(
            "Privacy and output",
            (
                ("privacy cost", cost(t)),
                ("suppressed below", f"{t.output.min_count} (such cells show as suppressed)"),
                ("rounded to", f"multiples of {t.output.round_to}"),
            ),
        ),
        Section(
            "Who may ask",
            (
                *analysts,
                ("expires", t.access.expires.isoformat()),
                ("quorum", quorum),
                (
                    "participants",
                    "only exactly these organisations: " + ", ".join(t.access.participants)
                    if t.access.participants
                    else "one node per dataset, in the datasets' order"
                    if t.overlap is not None
                    else "any set of the nodes hosting the dataset",
                ),
                (
                    "per-node breakdown",
                    "allowed (each organisation's own figures may be shown)"
                    if t.access.per_node_breakdown
                    else "not allowed (only combined figures)",
                ),
            ),
        ),
    ]
