"""CIN files with the gaps councils' extracts really have.

:func:`cin_gaps` takes one council's clean ``cin`` tables and leaves out what real
extracts often lack: the ``children`` row of some children who have referrals
(their referrals, episodes and plans stay, with no date of birth to age them), and
the primary need of some referrals that led to no further action (the census
makes the code optional there). Everything else is kept as it is, so the result is
its own truth: a correct ingest loads exactly these rows, and a template must
count the gaps under its "not recorded" cells rather than drop them.

FOR SYNTHETIC DATA ONLY.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.synth.rng import Generator
from tessera.synth.writer import Tables


@dataclass(frozen=True)
class CinGaps:
    """How much to leave out (shares of children or of NFA referrals)."""

    missing_child: float = 0.02  # children whose children row is missing
    nfa_need_blank: float = 0.3  # referrals with no further action and no need recorded


def cin_gaps(rng: Generator, tables: Tables, gaps: CinGaps | None = None) -> Tables:
    """A copy of ``tables`` with the gaps of :class:`CinGaps`; the same columns."""
    gaps = gaps or CinGaps()
    children = tables["children"]
    n = len(children["child_id"])
    keep = (rng.random(n) >= gaps.missing_child).tolist()
    out: Tables = {name: {k: list(v) for k, v in cols.items()} for name, cols in tables.items()}
    out["children"] = {
        k: [x for x, kept in zip(v, keep, strict=True) if kept] for k, v in children.items()
    }
    ref = out["referrals"]
    blank = (rng.random(len(ref["nfa"])) < gaps.nfa_need_blank).tolist()
    ref["primary_need"] = [
        "" if nfa == "true" and b else need
        for need, nfa, b in zip(ref["primary_need"], ref["nfa"], blank, strict=True)
    ]
    return out
