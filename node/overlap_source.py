"""The units one node contributes to an overlap query, read from its data.

`members` selects, with one parameterised DuckDB query built like the compiler's
(identifiers only from the schema, every value a bound parameter), one row per
privacy unit of the node's dataset that passes that dataset's filters: the
unit's linkage key as recorded and, at the categories party, its cell.

- The cell is chosen as count_units with max_cells_per_unit = 1 chooses it: the
  first of the unit's in-domain records in the node's keyed order (or by the
  template's choose/by). A unit with no in-domain record is left out. Other
  parties put every unit in category 0 and have no domain.
- A unit whose records carry several keys gives one: that of its first record in
  keyed order with a non-empty key. A unit with none is returned with None (it is
  "not linkable", counted, never dropped).
- Opt-out is per person, as in the compiler.
- One child is one element per agency: units whose keys normalise to the same
  valid NHS number are one element, so only the first (in keyed order) is kept.
  tessera.overlap.protocol.Party dedupes too; doing it here makes the rule part of
  what the node hands over, whatever consumes it. Units without a valid key are
  each kept (each is one "not linkable" unit).
"""

from __future__ import annotations

from typing import Any

from tessera import schemas
from tessera.node.compiler import (
    _CELL_BITS,
    _Builder,
    _q,
    cell_expr,
    opt_out_clause,
    rank_expr,
    unit_order,
)
from tessera.overlap.nhs import normalise
from tessera.templates.model import Choice, ParamValue, Template

Member = tuple[str | None, int]


def members_sql(
    template: Template,
    values: dict[str, ParamValue],
    party: int,
    *,
    exclude_opted_out: bool,
    order_key: bytes,
) -> tuple[str, list[Any]]:
    """The query and its bound parameters; rows (key or NULL, category), in keyed order."""
    spec = template.overlap
    if spec is None:
        raise ValueError("not an overlap template")
    if not 0 <= party < len(spec.datasets):
        raise ValueError("no such party in this overlap")
    od = spec.datasets[party]
    ds = schemas.dataset(od.dataset)
    assert ds is not None
    source = ds.sources[od.source]
    categories = party == spec.categories_from
    b = _Builder(values)
    # Parameters bind in the order of the SQL text: rank, cell, then the WHERE clause.
    rank = rank_expr(b, order_key)
    cell = cell_expr(b, template) if categories else "0"
    choose: Choice | None = template.statistic.choose if categories else None
    by = f", {_q(template.statistic.by)} AS b" if categories and template.statistic.by else ""
    where = [b.filter(f) for f in od.filters]
    where.append(f"{_q(source.unit)} IS NOT NULL")
    if exclude_opted_out and ds.opt_out_column is not None:
        where.append(opt_out_clause(ds, source))
    key = _q(od.linkage_key)
    order = unit_order(choose)
    sql = (
        f"WITH src AS ({source.sql}), "
        f"f AS (SELECT {_q(source.unit)} AS u, {rank} AS r, ({cell}) AS cell, "
        f"{key} AS key{by} FROM src WHERE {' AND '.join(where)}), "
        f"g AS (SELECT *, ((r >> {_CELL_BITS}) << {_CELL_BITS}) | CAST(cell AS UBIGINT) AS k "
        "FROM f WHERE cell IS NOT NULL), "
        # Per unit: its cell (as count_units with one cell per unit), its first non-empty
        # key in keyed order (ties, which need identical rows, broken by the key itself),
        # and its first key in keyed order, which orders the units.
        f"h AS (SELECT arg_min(cell, {order}) AS cell, "
        "arg_min(key, {'k': k, 'key': key}) FILTER (WHERE trim(key) <> '') AS key, "
        "min(k) AS first FROM g GROUP BY u) "
        "SELECT key, CAST(cell AS INTEGER) AS cell FROM h ORDER BY first, key"
    )
    return sql, b.params


def members(
    cursor: Any,
    template: Template,
    values: dict[str, ParamValue],
    party: int,
    *,
    exclude_opted_out: bool,
    order_key: bytes,
) -> list[Member]:
    """One (linkage key as recorded, or None; category index) per unit of dataset
    `party`, one per valid NHS number (see the module docstring)."""
    sql, params = members_sql(
        template, values, party, exclude_opted_out=exclude_opted_out, order_key=order_key
    )
    out: list[Member] = []
    seen: set[str] = set()
    for raw, cell in cursor.execute(sql, params).fetchall():
        key = None if raw is None else str(raw)
        nhs = normalise(key)
        if nhs is not None:
            if nhs in seen:  # the same child again: one element per agency
                continue
            seen.add(nhs)
        out.append((key, int(cell)))
    return out
