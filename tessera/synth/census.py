"""The CIN census as local authorities send it: the DfE's XML return and the flat
CSV export of it, written from one council's clean ``cin`` tables.

Each referral becomes a CINdetails (its closure date from the in-need episode
that starts that day, if any); each plan is filed under the CINdetails whose
episode was open when it started. Categories of abuse use the DfE's codes
(NEG, PHY, SAB, EMO, MUL). FOR SYNTHETIC DATA ONLY.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Final
from xml.sax.saxutils import escape

from tessera import schemas
from tessera.synth.writer import Tables

DFE_ABUSE: Final = {
    "NEGLECT": "NEG",
    "PHYSICAL": "PHY",
    "SEXUAL": "SAB",
    "EMOTIONAL": "EMO",
    "MULTIPLE": "MUL",
}
FLAT_COLUMNS: Final = schemas.CIN_CENSUS_FLAT_COLUMNS


@dataclass
class _Details:
    referral: str
    source: str
    need: str
    nfa: str
    closure: str = ""
    plans: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class _Child:
    child_id: str
    dob: str
    sex: str
    upn: str
    details: list[_Details] = field(default_factory=list)


def _children(cin: Tables) -> list[_Child]:
    c = cin["children"]
    kids = {
        cid: _Child(cid, dob, sex, upn)
        for cid, dob, sex, upn in zip(c["child_id"], c["dob"], c["sex"], c["upn"], strict=True)
    }
    r = cin["referrals"]
    for cid, when, source, need, nfa in zip(
        r["child_id"],
        r["referral_date"],
        r["referral_source"],
        r["primary_need"],
        r["nfa"],
        strict=True,
    ):
        kids[cid].details.append(_Details(when, source, need, nfa))
    e = cin["cin_episodes"]
    for cid, start, end in zip(e["child_id"], e["start_date"], e["end_date"], strict=True):
        for d in kids[cid].details:
            if d.referral == start and d.nfa != "true":
                d.closure = end
                break
    p = cin["cp_plans"]
    for cid, start, end, cat in zip(
        p["child_id"], p["start_date"], p["end_date"], p["initial_category"], strict=True
    ):
        open_then = [
            d
            for d in kids[cid].details
            if d.nfa != "true" and d.referral <= start and (not d.closure or d.closure >= start)
        ]
        earlier = [d for d in kids[cid].details if d.referral <= start]
        homes = open_then or earlier or kids[cid].details
        if homes:
            homes[-1].plans.append((start, end, DFE_ABUSE.get(cat, cat)))
    for kid in kids.values():
        kid.details.sort(key=lambda d: d.referral)
    return [kids[k] for k in sorted(kids)]


def _el(name: str, value: str) -> str:
    return f"<{name}>{escape(value)}</{name}>" if value else f"<{name}/>"


def census_xml(cin: Tables, year: int) -> str:
    """The CIN census XML return for collection ``year`` (its ReferenceDate 31 March)."""
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        "<Message>",
        "<Header><CollectionDetails><Collection>CIN</Collection>"
        f"<Year>{year}</Year><ReferenceDate>{year}-03-31</ReferenceDate>"
        "</CollectionDetails></Header>",
        "<Children>",
    ]
    for kid in _children(cin):
        out.append("<Child><ChildIdentifiers>")
        out += [
            _el("LAchildID", kid.child_id),
            _el("UPN", kid.upn),
            _el("PersonBirthDate", kid.dob),
            _el("GenderCurrent", kid.sex),
        ]
        out.append("</ChildIdentifiers>")
        for d in kid.details:
            nfa = "1" if d.nfa == "true" else "0"
            out.append("<CINdetails>")
            out += [
                _el("CINreferralDate", d.referral),
                _el("ReferralSource", d.source),
                _el("PrimaryNeedCode", d.need),
                _el("CINclosureDate", d.closure),
                _el("ReferralNFA", nfa),
            ]
            for start, end, cat in d.plans:
                out.append(
                    "<ChildProtectionPlans>"
                    + _el("CPPstartDate", start)
                    + _el("CPPendDate", end)
                    + _el("InitialCategoryOfAbuse", cat)
                    + "</ChildProtectionPlans>"
                )
            out.append("</CINdetails>")
        out.append("</Child>")
    out += ["</Children>", "</Message>"]
    return "\n".join(out) + "\n"


def census_flat_csv(cin: Tables) -> str:
    """The flat export: one row per CINdetails and plan, identifiers repeated."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FLAT_COLUMNS)
    for kid in _children(cin):
        ids = [kid.child_id, kid.upn, kid.dob, kid.sex]
        if not kid.details:
            w.writerow(ids + [""] * 8)
        for d in kid.details:
            nfa = "true" if d.nfa == "true" else "false"
            base = [*ids, d.referral, d.source, d.need, d.closure, nfa]
            for plan in d.plans or [("", "", "")]:
                w.writerow(base + list(plan))
    return buf.getvalue()
