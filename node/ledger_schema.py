"""The ledger's tables, its records, and moving an older ledger file to this schema
(node/ledger.py holds the write path)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tessera.audit import AuditRecord
from tessera.clock import parse_iso
from tessera.node import privacy
from tessera.node.config import Policy

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS releases (
        answer_key TEXT PRIMARY KEY,
        dataset TEXT NOT NULL,
        version INTEGER NOT NULL,
        template_digest TEXT NOT NULL,
        params TEXT NOT NULL,
        kind TEXT NOT NULL,
        cost REAL NOT NULL,
        payload BLOB NOT NULL,
        created TEXT NOT NULL,
        accountant TEXT NOT NULL,
        rho REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS releases_by_version ON releases (dataset, version, kind)",
    # Running totals, updated in the same transaction as each release, so that reading
    # what a version has spent costs the same however many answers it has released.
    """CREATE TABLE IF NOT EXISTS spent (
        dataset TEXT NOT NULL,
        version INTEGER NOT NULL,
        kind TEXT NOT NULL,
        total REAL NOT NULL,
        PRIMARY KEY (dataset, version, kind))""",
    """INSERT OR IGNORE INTO spent (dataset, version, kind, total)
        SELECT dataset, version, kind, sum(cost) FROM releases GROUP BY dataset, version, kind""",
    """CREATE TABLE IF NOT EXISTS requests (
        request_id TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        analyst TEXT NOT NULL,
        nonce TEXT NOT NULL,
        answer_key TEXT NOT NULL,
        charged REAL NOT NULL,
        created TEXT NOT NULL,
        UNIQUE (analyst, nonce))""",
    # The accountants' running totals in zCDP ρ: period LIFETIME for the whole life of
    # the accountant, and one row per period label (see `period_of`).
    """CREATE TABLE IF NOT EXISTS accountant_spent (
        accountant TEXT NOT NULL,
        period TEXT NOT NULL,
        rho REAL NOT NULL,
        PRIMARY KEY (accountant, period))""",
    """CREATE TABLE IF NOT EXISTS ledger_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL)""",
)
LIFETIME = "lifetime"
SCHEMA_VERSION = "2"
# Called after each paid commit with (audit seq, audit hash, lifetime ρ per accountant).
OnPaid = Callable[[int, str, dict[str, float]], None]


class LedgerSchemaError(RuntimeError):
    """A ledger file this version cannot use as it is."""


def period_of(period: str | None, when: datetime) -> str | None:
    """The label of the allowance period holding `when` (UTC)."""
    if period is None:
        return None
    if period == "financial_year":  # 1 April to 31 March
        start = when.year if when.month >= 4 else when.year - 1
        return f"FY{start}-{(start + 1) % 100:02d}"
    if period == "calendar_year":
        return f"{when.year}"
    if period == "month":
        return f"{when.year}-{when.month:02d}"
    raise ValueError(f"unknown period {period!r}")


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    request_hash: str
    analyst: str
    nonce: str


@dataclass(frozen=True)
class NewRelease:
    answer_key: str
    dataset: str
    version: int
    template_digest: str
    params: dict[str, Any]
    kind: str
    cost: float
    payload: bytes
    # The accountant that pays, and the release's loss in ρ as OpenDP converts it.
    accountant: str = ""
    rho: float = 0.0


@dataclass(frozen=True)
class ReleaseRow:
    answer_key: str
    dataset: str
    version: int
    template_digest: str
    kind: str
    cost: float
    accountant: str
    rho: float
    created: str


@dataclass(frozen=True)
class AccountantSpend:
    accountant: str
    lifetime_rho: float
    period: str | None
    period_rho: float


@dataclass(frozen=True)
class Job:
    """One caller's commit, as queued for the group commit."""

    req: RequestRecord
    answer_key: str
    release: NewRelease | None
    policy: Policy | None
    audit_body: dict[str, Any]


@dataclass(frozen=True)
class Committed:
    payload: bytes
    charged: float
    from_cache: bool
    audit: AuditRecord


def needs_migration(conn: sqlite3.Connection) -> bool:
    cols = {r[1] for r in conn.execute("PRAGMA table_info(releases)")}
    return bool(cols) and "accountant" not in cols


def meta(conn: sqlite3.Connection, key: str) -> str | None:
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger_meta'"
    ).fetchone():
        return None
    row = conn.execute("SELECT value FROM ledger_meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def migrate(conn: sqlite3.Connection, accountant_of: Callable[[str], str]) -> None:
    """Schema 1 kept a budget per dataset version and kind. Each past release is
    charged to its dataset's accountant at the ρ OpenDP converts its recorded loss to
    (ε as one pure release: ρ = ε²/2, never less than its measures' sum)."""
    conn.execute("ALTER TABLE releases ADD COLUMN accountant TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE releases ADD COLUMN rho REAL NOT NULL DEFAULT 0")
    rows = conn.execute("SELECT answer_key, dataset, kind, cost FROM releases").fetchall()
    for key, dataset, kind, cost in rows:
        rho = privacy.pure_to_rho(float(cost)) if kind == "epsilon" else float(cost)
        conn.execute(
            "UPDATE releases SET accountant = ?, rho = ? WHERE answer_key = ?",
            (accountant_of(str(dataset)), rho, key),
        )


def rebuild_totals(conn: sqlite3.Connection, period: str | None) -> None:
    """Recompose every accountant's totals from its releases."""
    groups: dict[tuple[str, str], list[float]] = {}
    for accountant, rho, created in conn.execute(
        "SELECT accountant, rho, created FROM releases ORDER BY created"
    ):
        groups.setdefault((str(accountant), LIFETIME), []).append(float(rho))
        label = period_of(period, parse_iso(str(created)))
        if label is not None:
            groups.setdefault((str(accountant), label), []).append(float(rho))
    conn.execute("DELETE FROM accountant_spent")
    for (accountant, label), rhos in groups.items():
        conn.execute(
            "INSERT INTO accountant_spent VALUES (?, ?, ?)",
            (accountant, label, privacy.compose_rho(rhos)),
        )
