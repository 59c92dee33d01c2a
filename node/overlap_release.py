"""The counting node's release of an overlap count: the cells, each with its 95%
interval, the small-overlap guard, the noisy not-linkable figures, as the canonical JSON
payload its answer statement signs (tessera.overlap.session.release_cells reads it)."""

from __future__ import annotations

from tessera import canonical, intervals
from tessera.node import privacy
from tessera.node.authorize import Authorized
from tessera.overlap import protocol


def release_payload(
    q: protocol.OverlapQuery, result: protocol.OverlapResult, auth: Authorized, session: str
) -> bytes:
    """The counting node's release: every cell with its 95% interval from the exact
    distribution of its noise (a sum of independent discrete Laplace draws, one per
    view cell it adds up), the small-overlap guard applied after the noise."""
    terms = [0] * len(q.labels())
    for mask, category in q.view_cells():
        cell = q.release_cell(mask, category)
        if cell is not None:
            terms[cell] += 1
    scale = None if q.epsilon is None else privacy.overlap_scale(q.epsilon)
    audience = auth.request.audience
    cells = []
    for c, t in zip(result.cells, terms, strict=True):
        if scale is None:
            k, coverage = 0, 1.0
        else:
            parts = [intervals.NoisePart(intervals.LAPLACE, scale)] * t
            k, exact = intervals.half_width(parts, intervals.LEVEL)
            coverage = float(int(exact * 1e6) / 1e6)
        shown = c.value if c.value is not None else max(q.min_count - 1, 0)
        lo, hi = intervals.rounded(shown, k, 1, True)
        cells.append(
            {
                "label": c.label,
                "estimate": 0 if c.value is None else c.value,
                "ci95_low": 0.0 if c.value is None else lo,
                "ci95_high": hi,
                "coverage": coverage,
                "suppressed": c.value is None,
            }
        )
    return canonical.encode(
        {
            "v": 1,
            "session": session,
            "request_id": auth.request.request_id,
            "template_digest": auth.digest,
            "statistic": "overlap_count",
            "match": q.kind.value,
            "cells": cells,
            "not_linkable": {
                audience[i]: list(result.not_linkable[q.parties[i]]) for i in range(q.n)
            },
            "epsilon": result.epsilon,
            "delta": result.delta,
            "noise": None if scale is None else {"mechanism": intervals.LAPLACE, "scale": scale},
            "exact": result.exact,
        }
    )
