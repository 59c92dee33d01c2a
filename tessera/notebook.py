"""A query result in a notebook: a DataFrame that says where it came from, and a chart
that shows the noise.

    pip install 'tessera[notebook]'      # pandas and matplotlib

    from tessera.client import Client
    client = Client.from_env()            # TESSERA_COORDINATOR, _TLS_DIR, _IDENTITY, _KEY
    result = client.run_query("cla-by-age-and-placement", {"on_date": "2025-03-31"})
    df = result.to_pandas()               # one row per cell; df.attrs holds the provenance
    fig = result.plot()                   # estimates with interval bars; suppressed marked
    fig.savefig("cla.png")

A suppressed cell has no estimate (NaN, never 0) and `suppressed` True; its interval
is the range it may lie in (0 up to the template's minimum count).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any

# The interval level the coordinator states for each cell; when a result does not say,
# it is the 95% level every release is built for.
DEFAULT_COVERAGE = 0.95
NOT_VERIFIED = "not verified: this result carries no verification outcome"
AXIS = {
    "count_units": "count of distinct people (noisy)",
    "count_records": "count of records (noisy)",
    "sum": "total (noisy)",
    "mean": "mean (noisy)",
}


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"this needs {module}, which is not installed: pip install 'tessera[notebook]' "
            f"(or pip install {module}; to_rows() and to_csv() need nothing extra)"
        ) from None


def coverage(cell: Any) -> float:
    """The cell's stated interval coverage (a probability), or 0.95 when not reported."""
    value = getattr(cell, "coverage", None)
    if isinstance(value, int | float) and 0 < value < 1:
        return float(value)
    return DEFAULT_COVERAGE


def interval(cell: Any) -> tuple[float, float]:
    for name in ("interval", "ci", "ci95"):
        value = getattr(cell, name, None)
        if isinstance(value, tuple | list) and len(value) == 2:
            return float(value[0]), float(value[1])
    raise AttributeError("cell has no interval")


def coverage_text(level: float) -> str:
    pct = level * 100
    return f"{pct:.1f}%".replace(".0%", "%")


def verification(result: Any) -> tuple[str, str]:
    """("verified" | "failed" | "not verified", detail), from whatever the result carries.

    Reads `result.verification` (a tessera.verify.Verification: `ok`, `problems`,
    `summary()`; or a mapping with the same keys), or a plain `result.verified` bool."""
    v = getattr(result, "verification", None)
    if v is None:
        flag = getattr(result, "verified", None)
        if isinstance(flag, bool):
            return ("verified" if flag else "failed", "")
        return ("not verified", NOT_VERIFIED)

    def get(name: str) -> Any:
        value = v.get(name) if isinstance(v, dict) else getattr(v, name, None)
        return value() if callable(value) else value

    ok = get("ok")
    detail = get("summary") or get("detail") or get("message") or ""
    problems = get("problems")
    if problems and not detail:
        detail = "; ".join(str(p) for p in problems)
    if not isinstance(ok, bool):
        return ("not verified", str(detail) or NOT_VERIFIED)
    return ("verified" if ok else "failed", str(detail))


def node_parts(result: Any) -> dict[str, str]:
    """Each contributing organisation's verification outcome, when the result has been
    verified (`result.verification.nodes` lists those whose signed answers verified)."""
    v = getattr(result, "verification", None)
    if v is None:
        parts = getattr(result, "parts", None) or ()
        orgs = sorted({str(getattr(p, "organisation", "")) for p in parts} - {""})
        return {org: "signed answer received, not checked" for org in orgs}
    good = v.get("nodes") if isinstance(v, dict) else getattr(v, "nodes", None)
    if good is None:
        return {}
    bad = {str(getattr(p, "node", None)) for p in (getattr(v, "problems", None) or ()) if p}
    out = {}
    for org in result.nodes_answered:
        if org in good:
            out[org] = "verified"
        else:
            out[org] = "failed" if org in bad else "not verified"
    return out


def provenance(result: Any) -> dict[str, Any]:
    """What a figure came from: the query, the nodes, the privacy cost, the verification."""
    status, detail = verification(result)
    return {
        "query_id": result.query_id,
        "template": result.template,
        "template_title": getattr(result, "template_title", "") or "",
        "template_digest": result.template_digest,
        "params": dict(getattr(result, "params", None) or {}),
        "mode": result.mode,
        "statistic": result.statistic,
        "released": result.released,
        "withheld_reason": result.withheld_reason,
        "nodes_answered": list(result.nodes_answered),
        "nodes_missing": dict(result.nodes_missing),
        "privacy_spent": dict(result.privacy_spent),
        "privacy_spent_is": "per node, on each contributing node's own ledger",
        "verification": status,
        "verification_detail": detail,
        "node_verification": node_parts(result),
        "data_notes": list(getattr(result, "notes", None) or []),
    }


def rows(result: Any) -> list[dict[str, Any]]:
    """One row per cell: scope (with a per-node breakdown), the dimensions, the estimate
    (NaN when suppressed), the interval, its coverage and the suppressed flag."""
    scoped: list[tuple[str, Sequence[Any]]] = [("combined", result.cells)]
    scoped += sorted((result.per_node or {}).items())
    out = []
    for scope, cells in scoped:
        for c in cells:
            row: dict[str, Any] = {"scope": scope} if result.per_node is not None else {}
            row.update(c.key)
            lo, hi = interval(c)
            row.update(
                estimate=math.nan if c.suppressed else float(c.estimate),
                ci_low=lo,
                ci_high=hi,
                coverage=coverage(c),
                suppressed=bool(c.suppressed),
            )
            out.append(row)
    return out


def to_pandas(result: Any) -> Any:
    pandas = _need("pandas")
    columns = (
        (["scope"] if result.per_node is not None else [])
        + list(result.dimensions)
        + ["estimate", "ci_low", "ci_high", "coverage", "suppressed"]
    )
    frame = pandas.DataFrame(rows(result), columns=columns)
    frame.attrs.update(provenance(result))
    return frame


def spent_text(result: Any) -> str:
    spent = ", ".join(f"{k} {v:g}" for k, v in result.privacy_spent.items())
    return f"privacy cost: {spent} on each node" if spent else "privacy cost: none"


def cell_label(result: Any, cell: Any) -> str:
    return " / ".join(str(cell.key[d]) for d in result.dimensions) or "all"


def plot(result: Any, *, question: str | None = None, ax: Any = None) -> Any:
    """A horizontal bar chart of the combined cells with their intervals as error bars;
    suppressed cells are drawn as hatched outlines labelled "suppressed", not as zero.
    Returns the matplotlib Figure (needs no display: safe on a server)."""
    _need("matplotlib")
    from matplotlib.figure import Figure

    if ax is None:
        n = max(len(result.cells), 1)
        fig = Figure(figsize=(8.0, min(1.6 + 0.32 * n, 14.0)), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    title = question or getattr(result, "template_title", "") or result.template
    ax.set_title(f"{title}\n{spent_text(result)}", fontsize=10, loc="left")
    if not result.released or not result.cells:
        ax.text(0.5, 0.5, f"withheld: {result.withheld_reason}", ha="center", va="center")
        ax.set_axis_off()
        return fig
    labels = [cell_label(result, c) for c in result.cells]
    ys = list(range(len(labels)))
    levels = {coverage(c) for c in result.cells}
    level = coverage_text(min(levels)) if len(levels) == 1 else "stated"
    shown = [(y, c) for y, c in zip(ys, result.cells, strict=True) if not c.suppressed]
    hidden = [(y, c) for y, c in zip(ys, result.cells, strict=True) if c.suppressed]
    if shown:
        est = [float(c.estimate) for _, c in shown]
        lows = [max(float(c.estimate) - interval(c)[0], 0.0) for _, c in shown]
        highs = [max(interval(c)[1] - float(c.estimate), 0.0) for _, c in shown]
        ax.barh(
            [y for y, _ in shown],
            est,
            xerr=[lows, highs],
            color="#4c78a8",
            ecolor="#222222",
            capsize=3,
            label=f"estimate with {level} interval",
        )
    if hidden:
        widths = [interval(c)[1] for _, c in hidden]
        ax.barh(
            [y for y, _ in hidden],
            widths,
            color="none",
            edgecolor="#999999",
            hatch="///",
            label="suppressed (somewhere in this range)",
        )
        for (y, _), w in zip(hidden, widths, strict=True):
            ax.text(w, y, " suppressed", va="center", fontsize=8, color="#555555")
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(AXIS.get(result.statistic, result.statistic or "estimate"))
    ax.set_xlim(left=min(0.0, *(interval(c)[0] for c in result.cells)))
    ax.legend(loc="lower right", fontsize=8)
    return fig
