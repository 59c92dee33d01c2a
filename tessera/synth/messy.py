"""SSDA903 files in the messy form councils really hold them.

:func:`stacked_returns` turns one council's clean ``header`` and ``episodes``
tables into an extract of several years' returns stacked in one file (a ``YEAR``
column): every return repeats the child's header row and every episode open
during its year, as it stood at the year's end (open then, closed in a later
return). On top of that it adds what councils' tools produce: children whose
header rows are missing, header copies that disagree between returns (an older
return's DOB corrected later), overlapping episodes, exact duplicate rows,
spreadsheet values (``1.0`` for ``1``, codes with trailing spaces or in lower
case) and dates written as ISO, ``DD/MM/YYYY``, ``DD/MM/YY`` or Excel serials.

It also returns the *truth*: the one table of episodes and of headers that a
correct reconciliation must recover (ISO dates, children without a header left
out of ``header``), so that tests can check ingest against it independently.

FOR SYNTHETIC DATA ONLY.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

from tessera import schemas
from tessera.synth.rng import Generator
from tessera.synth.writer import Columns, Tables

HEADER_COLUMNS: Final = schemas.column_names("ssda903", "header")
EPISODE_COLUMNS: Final = schemas.column_names("ssda903", "episodes")
YEAR: Final = "YEAR"
_EXCEL_EPOCH: Final = date(1899, 12, 30)
_DATE_HEADER = ("DOB", "MC_DOB")
_DATE_EPISODE = ("DECOM", "DEC")


@dataclass(frozen=True)
class MessyShares:
    """How much of each kind of mess to add (shares of children or rows)."""

    missing_header: float = 0.05  # children whose header rows are all missing
    conflicting_dob: float = 0.03  # children whose older returns carry another DOB
    overlap: float = 0.05  # children with several episodes: one made to overlap the next
    duplicate_row: float = 0.02  # episode rows repeated within a return
    spreadsheet: float = 0.3  # cells given a spreadsheet-style form (1.0, "U1 ", "u1")


def _parse(text: str) -> date | None:
    if not text:
        return None
    return datetime.strptime(text, "%d/%m/%Y").date()


def _iso(d: date | None) -> str:
    return "" if d is None else d.isoformat()


def format_date(d: date | None, form: int) -> str:
    """``d`` in one of the forms councils send: 0 ISO, 1 DD/MM/YYYY, 2 DD/MM/YY, 3 Excel."""
    if d is None:
        return ""
    if form == 0:
        return d.isoformat()
    if form == 1:
        return d.strftime("%d/%m/%Y")
    if form == 2:
        return d.strftime("%d/%m/%y")
    return str((d - _EXCEL_EPOCH).days)


def _rows(columns: Columns, names: tuple[str, ...]) -> list[dict[str, str]]:
    n = len(columns[names[0]]) if names else 0
    return [{k: columns[k][i] for k in names} for i in range(n)]


def stacked_returns(
    rng: Generator,
    tables: Tables,
    reference_day: date,
    *,
    years: int = 4,
    shares: MessyShares | None = None,
) -> tuple[Tables, Tables]:
    """(messy tables with a YEAR column, truth tables with ISO dates) for SSDA903."""
    shares = shares or MessyShares()
    header = _rows(tables["header"], HEADER_COLUMNS)
    episodes = _rows(tables["episodes"], EPISODE_COLUMNS)
    # Parsed truth, child by child, episodes by start.
    by_child: dict[str, list[dict[str, object]]] = {}
    for e in episodes:
        row: dict[str, object] = dict(e)
        row["DECOM"], row["DEC"] = _parse(e["DECOM"]), _parse(e["DEC"])
        by_child.setdefault(e["CHILD"], []).append(row)
    children = sorted(by_child)
    for eps in by_child.values():
        eps.sort(key=lambda r: r["DECOM"])  # type: ignore[arg-type, return-value]

    # Overlaps: an episode is made to end some days after the next one started.
    for child in children:
        eps = by_child[child]
        if len(eps) >= 2 and rng.random() < shares.overlap:
            i = int(rng.integers(0, len(eps) - 1))
            nxt = eps[i + 1]["DECOM"]
            assert isinstance(nxt, date)
            new_end = min(nxt + timedelta(days=int(rng.integers(1, 30))), reference_day)
            if new_end > nxt and eps[i]["DEC"] is not None:
                eps[i]["DEC"] = new_end
                eps[i]["REC"] = eps[i]["REC"] or "E8"

    headers = {h["CHILD"]: dict(h) for h in header}
    missing = {c for c in children if c in headers and rng.random() < shares.missing_header}
    conflicted = {c for c in children if rng.random() < shares.conflicting_dob}

    # Return year ends: the reference day and the same day in earlier years.
    ends = [
        date(reference_day.year - k, reference_day.month, reference_day.day) for k in range(years)
    ]
    ends.reverse()

    def member(ep: dict[str, object], k: int) -> bool:
        decom, dec = ep["DECOM"], ep["DEC"]
        assert isinstance(decom, date) and (dec is None or isinstance(dec, date))
        if decom > ends[k]:
            return False
        return k == 0 or dec is None or dec > ends[k - 1]

    last_return = {
        c: max((k for k in range(len(ends)) for ep in by_child[c] if member(ep, k)), default=-1)
        for c in children
    }
    messy_h: list[dict[str, str]] = []
    messy_e: list[dict[str, str]] = []
    for k, end in enumerate(ends):
        year = str(end.year)
        in_return: set[str] = set()
        for child in children:
            for ep in by_child[child]:
                if not member(ep, k):
                    continue  # not started yet, or closed before this year
                dec = ep["DEC"]
                assert dec is None or isinstance(dec, date)
                shown = dict(ep)
                if dec is not None and dec > end:
                    shown["DEC"], shown["REC"] = None, ""  # still open at this year's end
                messy_e.append(_episode_cells(rng, shown, year, shares))
                if rng.random() < shares.duplicate_row:
                    messy_e.append(dict(messy_e[-1]))
                in_return.add(child)
        for child in sorted(in_return):
            if child in missing or child not in headers:
                continue
            h = dict(headers[child])
            if child in conflicted and k < last_return[child]:
                dob = _parse(h["DOB"])
                assert dob is not None
                h["DOB"] = (dob + timedelta(days=int(rng.integers(1, 40)))).strftime("%d/%m/%Y")
            messy_h.append(_header_cells(rng, h, year, shares))

    # Only what some return holds: the truth a reconciliation can recover. A
    # conflicted child's truth is its latest return's copy, the clean one.
    truth_e = [ep for c in children for ep in by_child[c] if ep["DECOM"] <= ends[-1]]  # type: ignore[operator]
    truth_h = [
        headers[c] for c in sorted(headers) if c not in missing and last_return.get(c, -1) >= 0
    ]
    messy: Tables = {
        "header": {k: [r[k] for r in messy_h] for k in (*HEADER_COLUMNS, YEAR)},
        "episodes": {k: [r[k] for r in messy_e] for k in (*EPISODE_COLUMNS, YEAR)},
    }
    truth: Tables = {
        "header": {
            k: [_iso(_parse(r[k])) if k in _DATE_HEADER else r[k] for r in truth_h]
            for k in HEADER_COLUMNS
        },
        "episodes": {
            k: [
                _iso(r[k]) if k in _DATE_EPISODE else str(r[k])  # type: ignore[arg-type]
                for r in truth_e
            ]
            for k in EPISODE_COLUMNS
        },
    }
    return messy, truth


def _spread_code(rng: Generator, code: str, share: float) -> str:
    if not code or rng.random() >= share:
        return code
    return code.lower() if rng.random() < 0.5 else code + " "


def _episode_cells(
    rng: Generator, ep: dict[str, object], year: str, shares: MessyShares
) -> dict[str, str]:
    out: dict[str, str] = {}
    for k in EPISODE_COLUMNS:
        v = ep[k]
        if k in _DATE_EPISODE:
            assert v is None or isinstance(v, date)
            out[k] = format_date(v, int(rng.integers(0, 4)))
        elif k in ("LS", "PLACE", "CIN", "RNE"):
            out[k] = _spread_code(rng, str(v), shares.spreadsheet)
        else:
            out[k] = str(v)
    out[YEAR] = year
    return out


def _header_cells(
    rng: Generator, h: dict[str, str], year: str, shares: MessyShares
) -> dict[str, str]:
    out = dict(h)
    for k in _DATE_HEADER:
        out[k] = format_date(_parse(h[k]), int(rng.integers(0, 4)))
    for k in ("SEX", "MOTHER"):
        if out[k] and rng.random() < shares.spreadsheet:
            out[k] = out[k] + ".0"  # a number column round-tripped through a spreadsheet
    out["ETHNIC"] = _spread_code(rng, out["ETHNIC"], shares.spreadsheet)
    out[YEAR] = year
    return out
