"""Reconciling stacked returns: one row per natural key, the rules in docs/ingest.md.

An extract often holds several years' returns (a ``YEAR`` column, or one file per
year, given oldest first), so the same episode appears once per return: open in
one year, closed in a later one. For every table with a natural key, ingest keeps
exactly one copy per key, choosing in this order:

1. a *closed* copy over an open one (tables with an end date: an episode, in-need
   episode or plan closed in any return stays closed);
2. the copy from the *latest return*: the highest ``YEAR``, then the file given
   last;
3. the copy *last in its file*.

Every other copy is dropped and counted under the first rule that describes it:
``exact copy``, ``open copy of a closed record``, ``superseded by a later
return``, ``conflicting copy in the same return``. Keys whose copies disagree on
an identifying field (a child's date of birth or sex) are counted by DfE rule
code, never shown. Tables without a natural key are loaded as they are.

All of this runs in the in-memory build database, from ``stage_<table>`` into the
final ``<table>``; nothing here is built from request input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import duckdb
import numpy as np

from tessera.schemas import Dataset, Table

from .build import STAGE_PREFIX, create_sql, quote


@dataclass(frozen=True)
class KeyRule:
    key: tuple[str, ...]
    end: str | None = None  # closed copies (this column set) beat open ones
    conflicts: tuple[tuple[str, str], ...] = ()  # (column, rule code) to count disagreements


RULES: Final[Mapping[str, Mapping[str, KeyRule]]] = {
    "ssda903": {
        "header": KeyRule(("CHILD",), None, (("DOB", "203"), ("SEX", "202"))),
        "episodes": KeyRule(("CHILD", "DECOM"), "DEC"),
    },
    "cin": {
        "children": KeyRule(("child_id",), None, (("dob", "TES-C01"), ("sex", "TES-C02"))),
        "referrals": KeyRule(("child_id", "referral_date")),
        "cin_episodes": KeyRule(("child_id", "start_date"), "end_date"),
        "cp_plans": KeyRule(("child_id", "start_date"), "end_date"),
    },
}

# Tables whose unit needs a row in the "header" table to have attributes such as
# a date of birth: dataset -> (header table, unit column, dependent tables).
HEADERS: Final[Mapping[str, tuple[str, str, tuple[str, ...]]]] = {
    "ssda903": ("header", "CHILD", ("episodes",)),
    "cin": ("children", "child_id", ("referrals", "cin_episodes", "cp_plans")),
}

EXACT: Final = "exact copy"
OPEN_OF_CLOSED: Final = "open copy of a closed record"
LATER_RETURN: Final = "superseded by a later return"
SAME_RETURN: Final = "conflicting copy in the same return (last one kept)"
DROP_RULES: Final = (EXACT, OPEN_OF_CLOSED, LATER_RETURN, SAME_RETURN)


@dataclass
class TableReconciliation:
    rows_staged: int = 0
    rows_kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # drop rule -> rows
    conflicts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (column, code) -> keys


def _order(rule: KeyRule) -> str:
    closed = f"({quote(rule.end)} IS NOT NULL) DESC, " if rule.end else ""
    return f"{closed}coalesce(_year, -1) DESC, _file DESC, _seq DESC"


def reconcile_table(
    con: duckdb.DuckDBPyConnection, table: Table, rule: KeyRule | None
) -> TableReconciliation:
    stage = quote(STAGE_PREFIX + table.name)
    final = quote(table.name)
    cols = ", ".join(quote(c.name) for c in table.columns)
    out = TableReconciliation()
    row = con.execute(f"SELECT count(*) FROM {stage}").fetchall()[0]
    out.rows_staged = int(row[0]) if row else 0
    con.execute(create_sql(table))
    if rule is None:
        con.execute(f"INSERT INTO {final} SELECT {cols} FROM {stage} ORDER BY _seq")
        out.rows_kept = out.rows_staged
        return out
    key = ", ".join(quote(k) for k in rule.key)
    ranked = quote("ranked_" + table.name)
    con.execute(
        f"CREATE TEMP TABLE {ranked} AS SELECT *, row_number() OVER "
        f"(PARTITION BY {key} ORDER BY {_order(rule)}) AS _rn FROM {stage}"
    )
    con.execute(f"INSERT INTO {final} SELECT {cols} FROM {ranked} WHERE _rn = 1 ORDER BY {key}")
    row = con.execute(f"SELECT count(*) FROM {final}").fetchall()[0]
    out.rows_kept = int(row[0]) if row else 0
    if out.rows_kept < out.rows_staged:
        same = " AND ".join(
            f"d.{quote(c.name)} IS NOT DISTINCT FROM k.{quote(c.name)}" for c in table.columns
        )
        closed = (
            f"WHEN k.{quote(rule.end)} IS NOT NULL AND d.{quote(rule.end)} IS NULL THEN 2 "
            if rule.end
            else ""
        )
        on = " AND ".join(f"d.{quote(k)} = k.{quote(k)}" for k in rule.key)
        sql = (
            f"SELECT CASE WHEN {same} THEN 1 {closed}"
            "WHEN (coalesce(d._year, -1), d._file) < (coalesce(k._year, -1), k._file) THEN 3 "
            f"ELSE 4 END AS why, count(*) FROM {ranked} d JOIN {ranked} k "
            f"ON k._rn = 1 AND {on} WHERE d._rn > 1 GROUP BY why"
        )
        for why, n in con.execute(sql).fetchall():
            out.dropped[DROP_RULES[int(why) - 1]] += int(n)
    for column, code in rule.conflicts:
        sql = (
            f"SELECT count(*) FROM (SELECT {key} FROM {stage} GROUP BY {key} "
            f"HAVING count(DISTINCT {quote(column)}) > 1)"
        )
        row = con.execute(sql).fetchall()[0]
        if row and row[0]:
            out.conflicts[(column, code)] += int(row[0])
    con.execute(f"DROP TABLE {ranked}")
    return out


def reconcile(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> dict[str, TableReconciliation]:
    rules = RULES.get(dataset.name, {})
    return {t.name: reconcile_table(con, t, rules.get(t.name)) for t in dataset.tables}


def children_without_header(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> dict[str, int]:
    """Per dependent table: distinct units with rows there but no header row."""
    spec = HEADERS.get(dataset.name)
    if spec is None:
        return {}
    header, unit, tables = spec
    u = quote(unit)
    out = {}
    for name in tables:
        sql = (
            f"SELECT count(DISTINCT {u}) FROM {quote(name)} "
            f"WHERE {u} NOT IN (SELECT {u} FROM {quote(header)})"
        )
        row = con.execute(sql).fetchall()[0]
        out[name] = int(row[0]) if row else 0
    return out


def units_left_without_rows(
    con: duckdb.DuckDBPyConnection, table: str, unit: str, units: set[str]
) -> int:
    """How many of ``units`` (children with a refused row) have no row left in ``table``."""
    if not units:
        return 0
    view = "tessera_refused_units"
    con.register(view, {"u": np.array(sorted(units), dtype=object)})
    try:
        row = con.execute(
            f"SELECT count(*) FROM {view} WHERE u NOT IN (SELECT {quote(unit)} FROM {quote(table)})"
        ).fetchall()[0]
    finally:
        con.unregister(view)
    return int(row[0]) if row else 0
