"""Self-contained HTML pages: a query report for a board paper, and a template review
for an approver.

Each page is one file with no external requests: the style is inline, the chart is an
inline SVG whose text is drawn as paths (no fonts), there are no scripts, and a strict
Content-Security-Policy forbids loading anything from anywhere. Every value is escaped.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tessera import notebook
from tessera.report.describe import Section, cost_short, describe, parameter
from tessera.templates.model import Template

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
       color: #1b1b1b; max-width: 72rem; margin: 2rem auto; padding: 0 1.25rem;
       line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
h3 { font-size: 1rem; margin-top: 1.2rem; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6rem 0; width: 100%; }
th, td { border: 1px solid #d0d0d0; padding: 0.3rem 0.55rem; text-align: left;
         vertical-align: top; overflow-wrap: anywhere; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.fields th { width: 30%; font-weight: 600; }
.ok { color: #0b6b2b; font-weight: 600; }
.bad { color: #a4161a; font-weight: 600; }
.warn { color: #8a5a00; font-weight: 600; }
.suppressed { color: #666; font-style: italic; }
.chart svg { max-width: 100%; height: auto; }
pre.canonical { white-space: pre-wrap; word-break: break-all; background: #f7f7f7;
                border: 1px solid #ddd; padding: 0.75rem; font-size: 0.8rem; }
code { font-size: 0.9em; word-break: break-all; }
.two { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 1.5rem; }
@media (max-width: 52rem) { .two { grid-template-columns: 1fr; } }
footer { margin-top: 2.5rem; color: #666; font-size: 0.85rem; }
@media print { body { margin: 0; max-width: none; } }
"""


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en-GB">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{e(CSP)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def fields_table(fields: Sequence[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th scope='row'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in fields)
    return f"<table class='fields'>{rows}</table>"


def chart_svg(result: Any, question: str) -> str:
    """The result's chart as inline SVG markup, text drawn as paths."""
    import matplotlib

    fig = notebook.plot(result, question=question)
    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "tessera"}):
        fig.savefig(out, format="svg", metadata={"Date": None})
    svg = out.getvalue()
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


def _cells_table(result: Any, cells: Sequence[Any], caption: str) -> str:
    head = "".join(f"<th scope='col'>{e(d)}</th>" for d in result.dimensions)
    body = []
    for c in cells:
        lo, hi = notebook.interval(c)
        level = notebook.coverage_text(notebook.coverage(c))
        keys = "".join(f"<td>{e(c.key[d])}</td>" for d in result.dimensions)
        if c.suppressed:
            est = "<td class='num suppressed'>suppressed</td>"
            rng = f"<td class='num suppressed'>somewhere from {lo:g} to {hi:g}</td>"
        else:
            est = f"<td class='num'>{c.estimate:g}</td>"
            rng = f"<td class='num'>{lo:g} to {hi:g} ({e(level)})</td>"
        body.append(f"<tr>{keys}{est}{rng}</tr>")
    return (
        f"<table><caption>{e(caption)}</caption><thead><tr>{head}"
        "<th scope='col'>estimate</th><th scope='col'>interval</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _verification(result: Any) -> str:
    status, detail = notebook.verification(result)
    css = {"verified": "ok", "failed": "bad"}.get(status, "warn")
    words = {
        "verified": "Every part verified: each node's signed answer checks against its key, "
        "and the combined figures follow from them.",
        "failed": "Verification FAILED: do not rely on these figures.",
        "not verified": "Not verified: this result was not checked against the nodes' signatures.",
    }[status]
    out = f"<p class='{css}'>{e(words)}</p>"
    if detail and detail != notebook.NOT_VERIFIED:
        out += f"<p>{e(detail)}</p>"
    parts = notebook.node_parts(result)
    if parts:
        out += fields_table(sorted(parts.items()))
    return out


HOW_TO_READ = """
<ul>
<li><strong>Every figure has noise added on purpose.</strong> Differential privacy adds
random noise to each organisation's answer so that no child's record can be inferred
from the figures. The noise is drawn fresh for each new question and is stated
openly.</li>
<li><strong>The interval</strong> beside each figure shows where the true value lies with
the stated probability (for example 95%: 95 times in 100). Treat differences between
cells whose intervals overlap with caution.</li>
<li><strong>Suppressed</strong> means the figure was too small to publish safely; the true
value lies in the range shown with at least the stated probability, and may be zero.
A suppressed cell is not a zero.</li>
<li><strong>Counts are rounded and never below zero.</strong> Small differences between
figures may be rounding or noise rather than real change.</li>
<li><strong>Privacy spent</strong> is paid from each contributing organisation's own
privacy budget; asking the same question again returns the same answer at no further
cost.</li>
</ul>
"""


def query_report(
    result: Any,
    template: Template | None,
    *,
    params: Mapping[str, Any] | None = None,
    analyst: str = "",
    submitted_at: str = "",
    generated_at: datetime | None = None,
) -> str:
    """The analyst's report on one query, as an HTML page."""
    params = dict(params if params is not None else getattr(result, "params", None) or {})
    title = getattr(result, "template_title", "") or result.template
    if template is not None:
        title = template.title
    generated = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>{e(title)}</h1>"]
    parts.append(f"<p class='sub'>Tessera query report, {e(generated)}</p>")

    # The question.
    parts.append("<h2>The question</h2>")
    if template is not None:
        parts.append(f"<p>{e(' '.join(template.description.split()))}</p>")
    q_fields = [
        ("template", f"{result.template}" + (f" version {template.version}" if template else "")),
        ("template title", title),
        ("template digest", result.template_digest),
        ("statistic", result.statistic),
        ("mode", "combined across organisations" if result.mode == "combined" else result.mode),
    ]
    if params:
        for name, value in sorted(params.items()):
            slot = template.parameter(name) if template else None
            meaning = f" ({parameter(slot)})" if slot is not None else ""
            q_fields.append((f"parameter {name}", f"{value}{meaning}"))
    else:
        q_fields.append(("parameters", "not recorded with this result"))
    parts.append(fields_table(q_fields))

    # The answer.
    parts.append("<h2>The answer</h2>")
    if result.released:
        parts.append(f"<div class='chart' role='img' aria-label='{e(title)}'>")
        try:
            parts.append(chart_svg(result, title))
        except ImportError:
            parts.append("<p>(The chart needs matplotlib: pip install 'tessera[notebook]'.)</p>")
        parts.append("</div>")
        parts.append(_cells_table(result, result.cells, "Combined figures"))
        for org, cells in sorted((result.per_node or {}).items()):
            parts.append(f"<h3>{e(org)} alone</h3>")
            parts.append(_cells_table(result, cells, f"{org} alone"))
    else:
        parts.append(f"<p class='bad'>Nothing was released: {e(result.withheld_reason)}</p>")

    # Who took part.
    parts.append("<h2>Organisations</h2>")
    org_rows = []
    for n in result.nodes:
        if n.status == "OK":
            state = "<span class='ok'>took part</span>"
        else:
            state = f"<span class='bad'>missing</span>: {e(n.status)} {e(n.message)}"
        org_rows.append(f"<tr><td>{e(n.organisation)}</td><td>{state}</td></tr>")
    parts.append(
        "<table><thead><tr><th scope='col'>organisation</th><th scope='col'>outcome</th>"
        f"</tr></thead><tbody>{''.join(org_rows)}</tbody></table>"
    )
    answered, missing = result.nodes_answered, result.nodes_missing
    parts.append(
        f"<p>{len(answered)} organisation(s) took part"
        + (f"; {len(missing)} missing: {e(', '.join(missing))}." if missing else "; none missing.")
        + "</p>"
    )

    notes = list(getattr(result, "notes", None) or [])
    if notes:
        parts.append("<h2>About the data</h2>")
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")

    # Verification and privacy.
    parts.append("<h2>Verification</h2>")
    parts.append(_verification(result))
    parts.append("<h2>Privacy spent</h2>")
    spent = ", ".join(f"{k} = {v:g}" for k, v in result.privacy_spent.items()) or "none"
    parts.append(
        f"<p>{e(spent)}, paid by each contributing organisation from its own privacy "
        "budget before the answer was released.</p>"
    )
    parts.append("<h2>How to read this</h2>")
    parts.append(HOW_TO_READ)
    foot = [f"query id {result.query_id}"]
    if analyst:
        foot.append(f"asked by {analyst}")
    if submitted_at:
        foot.append(f"at {submitted_at}")
    parts.append(f"<footer>{e('; '.join(foot))}</footer>")
    return page(f"{title}: Tessera query report", "\n".join(parts))


REVIEW_CHECKS = """
<ul>
<li><strong>Purpose and legal basis</strong>: is this a proper use of each organisation's
data?</li>
<li><strong>The cells</strong>: are the categories and bands public and coarse enough?</li>
<li><strong>The per-unit cap and value bounds</strong>: how much can one person move the
answer?</li>
<li><strong>The privacy cost</strong> against the budgets the nodes hold.</li>
<li><strong>Who may ask</strong>, until when, the quorum, and whether per-node figures may
be shown.</li>
<li><strong>The digest</strong>: you sign exactly this digest; any change to the template
makes a different one.</li>
</ul>
"""


def _section(s: Section) -> str:
    return f"<h3>{e(s.heading)}</h3>" + fields_table(s.fields)


def template_review(
    template: Template,
    digest: str,
    canonical: bytes,
    *,
    source_text: str | None = None,
    approvals: int | None = None,
    generated_at: datetime | None = None,
) -> str:
    """Everything a template does, in plain words, beside its canonical text and digest."""
    generated = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>Template review: {e(template.title)}</h1>"]
    parts.append(
        f"<p class='sub'>{e(template.id)} version {template.version}, "
        f"{e(cost_short(template))}, {template.n_cells} cells; prepared {e(generated)}</p>"
    )
    parts.append(f"<p>Digest (what your approval signs): <code>{e(digest)}</code></p>")
    if approvals is not None:
        parts.append(f"<p>Approvals beside the file: {approvals}</p>")
    parts.append("<h2>What to check</h2>")
    parts.append(REVIEW_CHECKS)
    parts.append("<div class='two'><div>")
    parts.append("<h2>In plain words</h2>")
    parts.extend(_section(s) for s in describe(template, digest))
    parts.append("</div><div>")
    parts.append("<h2>Canonical text</h2>")
    parts.append(
        "<p>The exact bytes approvals sign (their SHA-256 is the digest), laid out for reading:</p>"
    )
    pretty = json.dumps(json.loads(canonical), indent=2, ensure_ascii=False)
    parts.append(f"<pre class='canonical'>{e(pretty)}</pre>")
    parts.append("<h3>Exact canonical bytes</h3>")
    parts.append(f"<pre class='canonical' id='canonical'>{e(canonical.decode('utf-8'))}</pre>")
    if source_text is not None:
        parts.append("<h3>The file as written</h3>")
        parts.append(f"<pre class='canonical'>{e(source_text)}</pre>")
    parts.append("</div></div>")
    parts.append(f"<footer>{e(template.id)} v{template.version}; digest {e(digest)}</footer>")
    return page(f"Template review: {template.title}", "\n".join(parts))
