"""Combining the nodes' answers into one result, or withholding it. Pure: no I/O.

Below the template's quorum nothing is released and the result names every node
that did not answer and why. Above it, the noisy vectors are summed (variances
add) and post-processed once; every node asked is listed with its part.
"""

from __future__ import annotations

from collections.abc import Sequence

from tessera import results
from tessera.coordinator.model import OK, Loss, NodeAnswer, NodeReport, Outcome, QueryResult
from tessera.templates.model import Mode, Template, measure_sensitivities


def loss_kind(template: Template) -> str:
    return "epsilon" if template.privacy.epsilon is not None else "rho"


def check_answer(template: Template, digest: str, organisation: str, a: NodeAnswer) -> str | None:
    """Why an answer cannot be combined for this template, or None if it fits."""
    if a.organisation != organisation:
        return f"the node answered as {a.organisation!r}"
    if a.template_digest != digest:
        return "the answer is for another template"
    want = set(measure_sensitivities(template.statistic))
    if set(a.measures) != want:
        return f"the answer carries measures {sorted(a.measures)}, expected {sorted(want)}"
    n = template.n_cells
    if any(len(m.values) != n for m in a.measures.values()) or len(a.cells) != n:
        return f"the answer does not have the template's {n} cells"
    if a.cost.kind != loss_kind(template):
        return f"the answer's privacy loss is in {a.cost.kind}, not {loss_kind(template)}"
    mechanism = results.mechanism(a.cost.kind)
    if any(
        len(m.noise) > 1 or p.mechanism != mechanism for m in a.measures.values() for p in m.noise
    ):
        return f"the answer's noise is not one {mechanism} per measure"
    return None


def _checked(
    template: Template, digest: str, outcomes: Sequence[Outcome[NodeAnswer]]
) -> list[Outcome[NodeAnswer]]:
    out = []
    for o in outcomes:
        problem = None
        if o.status == OK:
            problem = (
                "no answer"
                if o.value is None
                else check_answer(template, digest, o.organisation, o.value)
            )
        if problem is not None:
            o = Outcome(o.organisation, "INTERNAL", f"answer refused: {problem}", o.latency_ms)
        out.append(o)
    return sorted(out, key=lambda o: o.organisation)


def withheld_reason(quorum: int, outcomes: Sequence[Outcome[NodeAnswer]]) -> str:
    answered = sum(1 for o in outcomes if o.ok)
    failed = [f"{o.organisation} ({o.status}: {o.message})" for o in outcomes if not o.ok]
    reason = f"nothing released: {answered} of the {quorum} nodes the template requires answered"
    if len(outcomes) < quorum:
        reason += f"; only {len(outcomes)} node(s) were asked"
    if failed:
        reason += "; not answering: " + "; ".join(failed)
    return reason


def combine(
    template: Template,
    digest: str,
    query_id: str,
    mode: Mode,
    outcomes: Sequence[Outcome[NodeAnswer]],
) -> QueryResult:
    checked = _checked(template, digest, outcomes)
    answers = [o.value for o in checked if o.ok and o.value is not None]
    quorum = template.access.quorum
    released = len(answers) >= quorum
    cells: tuple[results.Cell, ...] = ()
    per_node: tuple[tuple[str, tuple[results.Cell, ...]], ...] = ()
    reason = ""
    if released:
        measures = results.combine([a.measures for a in answers])
        cells = tuple(results.release(template, measures))
        if mode is Mode.PER_NODE and template.access.per_node_breakdown:
            per_node = tuple((a.organisation, tuple(a.cells)) for a in answers)
    else:
        reason = withheld_reason(quorum, checked)
    spent = max((a.cost.value for a in answers), default=0.0)
    return QueryResult(
        query_id=query_id,
        template_digest=digest,
        template_id=template.id,
        mode=mode,
        released=released,
        withheld_reason=reason,
        statistic=template.statistic.kind.value,
        dimensions=tuple((d.name, d.labels) for d in template.group_by),
        cells=cells,
        nodes=tuple(
            NodeReport(o.organisation, o.status, o.message, released and o.ok, o.latency_ms)
            for o in checked
        ),
        privacy_spent=Loss(loss_kind(template), spent),
        per_node=per_node,
        notes=data_notes(template, answers) if released else (),
    )


def data_notes(template: Template, answers: Sequence[NodeAnswer]) -> tuple[str, ...]:
    """The contributors' notes on their data. A combined-only template says how many
    organisations gave a note, never which, so no single organisation's figure shows."""
    noted = [(a.organisation, n) for a in answers for n in a.notes]
    if template.access.per_node_breakdown:
        return tuple(f"{org}: {n}" for org, n in noted)
    if not noted:
        return ()
    orgs = len({org for org, _ in noted})
    where = {n.rpartition(": ")[2] for _, n in noted}
    return (
        f"{orgs} of the {len(answers)} contributing organisations have children with "
        f"records but no header row ({'; '.join(sorted(where))})",
    )
