"""A stored answer's figures are post-processed and put on the wire once, then reused:
the reply for a cached answer is exactly what building it afresh gives, and nothing
that varies per request (audit position, charge, cache flag) is ever reused."""

from __future__ import annotations

from pathlib import Path

from tessera import canonical, results, templates
from tessera.node import figures, privacy, servicer
from tessera.node.service import Answer

TEMPLATE = Path(__file__).resolve().parents[3] / "bench" / "templates"


def _payload(t: templates.Template, values: list[int], salt: str) -> bytes:
    return canonical.encode(
        {
            "salt": salt,
            "notes": [],
            "kind": "rho",
            "cost": 0.5,
            "measures": [
                {
                    "name": "count",
                    "values": values,
                    "variance": 4.0,
                    "ci95": 4.0,
                    "ci975": 4.5,
                    "mechanism": results.mechanism("rho"),
                    "scale": 2.0,
                }
            ],
        }
    )


def _answer(t: templates.Template, payload: bytes, seq: int, cached: bool) -> Answer:
    f = figures.figures_of(t, payload)
    return Answer(
        organisation="Site",
        template=t,
        digest="d" * 64,
        dataset_version=1,
        measures=dict(f.measures),
        cells=list(f.cells),
        cost=privacy.Loss(f.kind, f.cost),
        charged=0.0 if cached else f.cost,
        from_cache=cached,
        audit_seq=seq,
        audit_hash=f"{seq:064x}",
        statement=b"statement %d" % seq,
        statement_signature=b"sig",
        payload=payload,
        notes=f.notes,
    )


def _template() -> templates.Template:
    path = TEMPLATE / "ed-attendances-by-age-and-category.toml"
    return templates.load_toml(path.read_text(encoding="utf-8"))


def test_a_cached_reply_is_the_fresh_reply_with_its_own_request_fields() -> None:
    t = _template()
    payload = _payload(t, list(range(t.n_cells)), "a" * 32)
    first = servicer.answer_to_proto(_answer(t, payload, 1, cached=False))
    again = servicer.answer_to_proto(_answer(t, payload, 2, cached=True))
    assert again.audit_seq == 2 and again.answer.from_cache
    assert again.answer.charged.rho == 0.0 and first.answer.charged.rho == 0.5
    assert again.statement == b"statement 2"
    assert list(again.answer.cells) == list(first.answer.cells)
    # Built afresh, with nothing cached, the bytes are the same.
    servicer._figures.clear()
    fresh = servicer.answer_to_proto(_answer(t, payload, 2, cached=True))
    assert fresh.SerializeToString(deterministic=True) == again.SerializeToString(
        deterministic=True
    )


def test_another_payload_is_not_served_from_the_cache() -> None:
    t = _template()
    one = _payload(t, [10] * t.n_cells, "b" * 32)
    two = _payload(t, [90] * t.n_cells, "c" * 32)
    a = servicer.answer_to_proto(_answer(t, one, 1, cached=False))
    b = servicer.answer_to_proto(_answer(t, two, 2, cached=False))
    assert [c.estimate for c in a.answer.cells] != [c.estimate for c in b.answer.cells]
    assert list(b.answer.measures[0].values) == [90] * t.n_cells


def test_the_figures_cache_keys_on_the_exact_payload() -> None:
    t = _template()
    cache = figures.FiguresCache(size=1)
    one = _payload(t, [10] * t.n_cells, "d" * 32)
    two = _payload(t, [20] * t.n_cells, "e" * 32)
    assert cache.get(t, "k", one).measures["count"].values[0] == 10
    assert cache.get(t, "k", two).measures["count"].values[0] == 20  # same key, new bytes
    assert cache.get(t, "k", one) == figures.figures_of(t, one)
