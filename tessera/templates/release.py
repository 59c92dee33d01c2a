"""Reading what a template releases and on what terms: the statistic, its privacy
cost, the output rules, and who may ask (access)."""

from __future__ import annotations

from tessera import keys, schemas
from tessera.templates.fields import Fields
from tessera.templates.model import (
    RESERVED_STATISTICS,
    Access,
    Analyst,
    Choice,
    Output,
    Privacy,
    Statistic,
    StatisticKind,
    TemplateError,
)
from tessera.templates.scope import MAX_BOUND, Context

MAX_ANALYSTS = 100
MAX_CAP = 1_000
# Costs outside these limits are refused as unsafe or meaningless.
MAX_EPSILON = 10.0
MAX_RHO = 10.0


def read_statistic(f: Fields, ctx: Context) -> Statistic:
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
        choose, by = read_choice(f, ctx)
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


def read_choice(f: Fields, ctx: Context) -> tuple[Choice | None, str | None]:
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


def read_privacy(f: Fields) -> Privacy:
    has_e, has_r = f.has("epsilon"), f.has("rho")
    if has_e == has_r:
        raise TemplateError("privacy", "give exactly one of epsilon (pure DP) or rho (zCDP)")
    key, limit = ("epsilon", MAX_EPSILON) if has_e else ("rho", MAX_RHO)
    v = f.number(key)
    if not 0 < v <= limit:
        raise TemplateError(f.at(key), f"must be above 0 and at most {limit}")
    f.done()
    return Privacy(epsilon=v) if has_e else Privacy(rho=v)


def read_output(f: Fields) -> Output:
    out = Output(
        min_count=f.integer("min_count", lo=0, hi=1000),
        round_to=f.integer("round_to", lo=1, hi=1000),
    )
    f.done()
    return out


def read_access(f: Fields) -> Access:
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
