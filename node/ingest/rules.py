"""Validation rules checked on the reconciled tables, reported by code and count.

Codes of three digits (SSDA903) and four (CIN) are the DfE's published
validation rule numbers; ``TES-`` codes are Tessera's own, for checks the DfE
states without a number we could cite. A failed rule does not refuse the row
(the DfE's validators flag rows too, and the return is still used): it is
counted, so that the operator can fix the source system. Rules on single cells
(a code not in its list, an unreadable date) refuse the row at validation; the
report shows their DfE code alongside (:data:`CELL_RULES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import duckdb

from tessera.schemas import Dataset


@dataclass(frozen=True)
class Rule:
    code: str
    table: str
    message: str
    where: str  # SQL condition over the table's columns: true for a failing row
    query: str = ""  # or a whole count query, when a condition is not enough

    def sql(self) -> str:
        return self.query or f'SELECT count(*) FROM "{self.table}" WHERE {self.where}'


def _overlap(table: str, unit: str, start: str, end: str) -> str:
    """Rows starting before an earlier-starting row of the same unit has ended."""
    return (
        f"SELECT count(*) FROM (SELECT {start} AS s, max(coalesce({end}, DATE '9999-12-31')) "
        f"OVER (PARTITION BY {unit} ORDER BY {start} ROWS BETWEEN UNBOUNDED PRECEDING "
        f"AND 1 PRECEDING) AS prev_end FROM {table}) WHERE s < prev_end"
    )


NO_PROVIDER_PLACEMENTS: Final = "('T0', 'T1', 'T2', 'T3', 'T4', 'Z1')"

RULES: Final[Mapping[str, tuple[Rule, ...]]] = {
    "ssda903": (
        Rule(
            "356",
            "episodes",
            "the episode ceased before it started (DEC before DECOM)",
            "DEC < DECOM",
        ),
        Rule(
            "445",
            "episodes",
            "legal status D1 on an episode starting after December 2005",
            "LS = 'D1' AND DECOM > DATE '2005-12-31'",
        ),
        Rule(
            "446",
            "episodes",
            "legal status E1 on an episode starting before December 2005",
            "LS = 'E1' AND DECOM < DATE '2005-12-01'",
        ),
        Rule(
            "178",
            "episodes",
            "placement provider given for a placement that has none",
            f"PLACE_PROVIDER IS NOT NULL AND PLACE IN {NO_PROVIDER_PLACEMENTS}",
        ),
        Rule(
            "530",
            "episodes",
            "placement provider PR4 with placement P1",
            "PLACE = 'P1' AND PLACE_PROVIDER = 'PR4'",
        ),
        Rule(
            "TES-903-01",
            "episodes",
            "episode ceased (DEC) but no reason (REC) given",
            "DEC IS NOT NULL AND REC IS NULL",
        ),
        Rule(
            "TES-903-02",
            "episodes",
            "reason episode ceased (REC) given on an open episode",
            "DEC IS NULL AND REC IS NOT NULL AND REC <> 'X1'",
        ),
        Rule(
            "TES-903-03",
            "episodes",
            "episode starts before the child's previous episode ceased (overlap)",
            "",
            _overlap("episodes", "CHILD", "DECOM", "DEC"),
        ),
        Rule(
            "TES-903-04",
            "episodes",
            "episode starts before the child's date of birth",
            "",
            "SELECT count(*) FROM episodes e JOIN header h USING (CHILD) WHERE e.DECOM < h.DOB",
        ),
        Rule(
            "386",
            "episodes",
            "reason ceased is adoption but the child had reached 18",
            "",
            "SELECT count(*) FROM episodes e JOIN header h USING (CHILD) "
            "WHERE e.REC IN ('E11', 'E12') AND e.DEC >= h.DOB + INTERVAL 18 YEAR",
        ),
        Rule(
            "621",
            "header",
            "mother's child's date of birth is not after the mother's",
            "MC_DOB IS NOT NULL AND MC_DOB <= DOB",
        ),
        Rule(
            "611",
            "header",
            "child is a mother (MOTHER = 1) but MC_DOB is blank",
            "MOTHER = '1' AND MC_DOB IS NULL",
        ),
    ),
    "cin": (
        Rule(
            "8630",
            "cin_episodes",
            "CIN closure date is before the referral date",
            "end_date < start_date",
        ),
        Rule(
            "TES-CIN-01",
            "cp_plans",
            "child protection plan ends before it starts",
            "end_date < start_date",
        ),
        Rule(
            "TES-CIN-02",
            "cin_episodes",
            "in-need episode starts before the child's previous one closed (overlap)",
            "",
            _overlap("cin_episodes", "child_id", "start_date", "end_date"),
        ),
    ),
}

# DfE codes for single-cell checks that refuse a row: (dataset, column) -> code.
CELL_RULES: Final[Mapping[tuple[str, str], str]] = {
    ("ssda903", "SEX"): "101",
    ("ssda903", "DOB"): "102",
    ("ssda903", "ETHNIC"): "103",
    ("ssda903", "DECOM"): "141",
    ("ssda903", "RNE"): "143",
    ("ssda903", "LS"): "144",
    ("ssda903", "CIN"): "145",
    ("ssda903", "PLACE"): "146",
    ("ssda903", "DEC"): "147",
    ("ssda903", "REC"): "149",
    ("ssda903", "MC_DOB"): "171",
    ("ssda903", "PLACE_PROVIDER"): "178",
    ("cin", "initial_category"): "8905",
}


@dataclass(frozen=True)
class RuleResult:
    code: str
    table: str
    message: str
    failures: int


def check_rules(con: duckdb.DuckDBPyConnection, dataset: Dataset) -> list[RuleResult]:
    """Every rule of ``dataset`` with its count of failing rows (zero included)."""
    out = []
    for rule in RULES.get(dataset.name, ()):
        row = con.execute(rule.sql()).fetchall()[0]
        out.append(RuleResult(rule.code, rule.table, rule.message, int(row[0]) if row else 0))
    return out
