"""The CIN census as local authorities produce it: the DfE's XML return (the
common basic data set: Message/Children/Child with ChildIdentifiers, CINdetails
and ChildProtectionPlans) and the flat CSV export many LAs make of it (one row
per CINdetails, with the child's identifiers and at most one plan repeated on
each row, columns named as the XML elements).

Either is split into raw text rows for the ``cin`` tables (children, referrals,
cin_episodes, cp_plans), which then go through the same validation and
reconciliation as Tessera's own layout. Every CINdetails is a referral; one
that was not "no further action" (ReferralNFA) is also an in-need episode, from
the referral date to the closure date.

XML is parsed with defusedxml: no DTDs, no entity expansion, no external
references. Messages name the file and the child's position, never a value.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from typing import Final
from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, iterparse

from tessera import schemas

from .readers import FileProblem, MemoryTable, SourceFile
from .validate import RETURN_YEAR, header_key

CENSUS: Final = "census"  # the pseudo-table name a census file is given under

COLUMNS: Final = {
    "children": ["child_id", "dob", "sex", "upn", RETURN_YEAR],
    "referrals": [
        "child_id",
        "referral_date",
        "referral_source",
        "primary_need",
        "nfa",
        RETURN_YEAR,
    ],
    "cin_episodes": ["child_id", "start_date", "end_date", "primary_need", RETURN_YEAR],
    "cp_plans": ["child_id", "start_date", "end_date", "initial_category", RETURN_YEAR],
}
# The DfE's category-of-abuse codes, read as the schema's.
ABUSE_CODES: Final = {
    "NEG": "NEGLECT",
    "PHY": "PHYSICAL",
    "SAB": "SEXUAL",
    "EMO": "EMOTIONAL",
    "MUL": "MULTIPLE",
}
ABUSE_MAPPED: Final = "DfE category-of-abuse code read as the schema's (NEG as NEGLECT)"
_NFA_TRUE: Final = frozenset({"1", "1.0", "true", "y", "yes"})

# Flat CSV columns (matched like any header: case and spaces ignored).
_FLAT: Final = (*schemas.CIN_CENSUS_FLAT_COLUMNS, RETURN_YEAR)


class _Split:
    def __init__(self) -> None:
        self.rows: dict[str, list[list[str]]] = {t: [] for t in COLUMNS}
        self.lines: dict[str, list[int]] = {t: [] for t in COLUMNS}
        self.normalised: Counter[tuple[str, str, str]] = Counter()

    def add(self, table: str, line: int, row: list[str]) -> None:
        self.rows[table].append(row)
        self.lines[table].append(line)

    def details(
        self,
        line: int,
        child: str,
        year: str,
        referral: str,
        source: str,
        need: str,
        closure: str,
        nfa: str,
    ) -> None:
        self.add("referrals", line, [child, referral, source, need, nfa, year])
        if nfa.strip().lower() not in _NFA_TRUE:
            self.add("cin_episodes", line, [child, referral, closure, need, year])

    def plan(self, line: int, child: str, year: str, start: str, end: str, category: str) -> None:
        code = category.strip().upper()
        if code in ABUSE_CODES:
            category = ABUSE_CODES[code]
            self.normalised[("cp_plans", "initial_category", ABUSE_MAPPED)] += 1
        self.add("cp_plans", line, [child, start, end, category, year])

    def sources(self, src: SourceFile) -> list[SourceFile]:
        return [
            SourceFile(
                table,
                src.path,
                "memory",
                src.sha256,
                "",
                memory=MemoryTable(list(COLUMNS[table]), self.rows[table], self.lines[table]),
            )
            for table in COLUMNS
        ]


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _text(parent: Element | None, name: str) -> str:
    if parent is None:
        return ""
    for child in parent:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return ""


def _children(parent: Element, name: str) -> Iterator[Element]:
    return (c for c in parent if _local(c.tag) == name)


def _read_xml(src: SourceFile, out: _Split) -> None:
    year = ""
    number = 0
    failed = ""
    try:
        for _event, elem in iterparse(str(src.path), events=("end",), forbid_dtd=True):
            tag = _local(elem.tag)
            if tag == "CollectionDetails":
                year = _text(elem, "Year")
            elif tag == "Child":
                number += 1
                ids = next(_children(elem, "ChildIdentifiers"), None)
                child = _text(ids, "LAchildID")
                out.add(
                    "children",
                    number,
                    [
                        child,
                        _text(ids, "PersonBirthDate"),
                        _text(ids, "GenderCurrent"),
                        _text(ids, "UPN"),
                        year,
                    ],
                )
                for details in _children(elem, "CINdetails"):
                    out.details(
                        number,
                        child,
                        year,
                        _text(details, "CINreferralDate"),
                        _text(details, "ReferralSource"),
                        _text(details, "PrimaryNeedCode"),
                        _text(details, "CINclosureDate"),
                        _text(details, "ReferralNFA"),
                    )
                    for plan in _children(details, "ChildProtectionPlans"):
                        out.plan(
                            number,
                            child,
                            year,
                            _text(plan, "CPPstartDate"),
                            _text(plan, "CPPendDate"),
                            _text(plan, "InitialCategoryOfAbuse"),
                        )
                elem.clear()
    except DefusedXmlException:
        failed = "XML with a DTD or entities is refused"
    except ParseError:
        failed = f"not well-formed XML (after child {number})"
    except OSError:
        failed = "file cannot be read"
    if failed:  # raised outside the except block: parser messages may quote content
        raise FileProblem(failed)


def _read_flat(src: SourceFile, out: _Split) -> None:
    wanted = {header_key(name): name for name in _FLAT}
    with src.path.open(encoding=src.encoding, newline="") as f:
        reader = csv.reader(f)
        failed = False
        try:
            header = next(reader, [])
            at = {wanted[k]: i for i, h in enumerate(header) if (k := header_key(h)) in wanted}
            if "LAchildID" not in at:
                raise FileProblem("not a CIN census export: no LAchildID column")
            width = len(header)
            for record in reader:
                line = reader.line_num
                if not any(record):
                    continue
                if len(record) < width:
                    record = record + [""] * (width - len(record))

                def get(name: str, record: list[str] = record) -> str:
                    i = at.get(name)
                    return record[i] if i is not None else ""

                child, year = get("LAchildID"), get(RETURN_YEAR)
                out.add(
                    "children",
                    line,
                    [child, get("PersonBirthDate"), get("GenderCurrent"), get("UPN"), year],
                )
                if get("CINreferralDate").strip():
                    out.details(
                        line,
                        child,
                        year,
                        get("CINreferralDate"),
                        get("ReferralSource"),
                        get("PrimaryNeedCode"),
                        get("CINclosureDate"),
                        get("ReferralNFA"),
                    )
                if get("CPPstartDate").strip():
                    out.plan(
                        line,
                        child,
                        year,
                        get("CPPstartDate"),
                        get("CPPendDate"),
                        get("InitialCategoryOfAbuse"),
                    )
        except csv.Error:
            failed = True
        if failed:
            raise FileProblem(f"malformed CSV at line {reader.line_num}")


def split_census(
    src: SourceFile,
) -> tuple[list[SourceFile], Counter[tuple[str, str, str]]]:
    """The census file as one in-memory source per cin table, and the codes mapped."""
    out = _Split()
    if src.path.suffix.lower() == ".xml":
        _read_xml(src, out)
    else:
        _read_flat(src, out)
    return out.sources(src), out.normalised
